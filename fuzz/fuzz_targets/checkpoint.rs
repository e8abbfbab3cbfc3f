//! A safetensors checkpoint, its architecture and its strict load: any bytes give a
//! network or an error, never a panic, an abort or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflow::models::{Arch, Model, Stem};
use reflow::StateDict;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = StateDict::from_safetensors_bytes(data) {
        for stem in [Stem::Cifar, Stem::Imagenet] {
            let _ = Model::from_state_dict(&state, Arch::AUTO, stem);
        }
    }
});
