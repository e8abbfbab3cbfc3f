//! A masks file (the `weight_mask` convention) and its application to a network: any
//! bytes give masks or an error, and masks that do not fit are an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflow::models::{ResNet, ResNetConfig};
use reflow::prune::Masks;
use reflow::StateDict;
use std::sync::OnceLock;

fn net() -> &'static std::sync::Mutex<ResNet> {
    static NET: OnceLock<std::sync::Mutex<ResNet>> = OnceLock::new();
    NET.get_or_init(|| {
        std::sync::Mutex::new(ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(state) = StateDict::from_safetensors_bytes(data) else {
        return;
    };
    if let Ok(masks) = Masks::from_state_dict(&state) {
        let mut net = net().lock().unwrap_or_else(|e| e.into_inner());
        let _ = masks.apply(&mut *net);
    }
});
