//! Where an eval pass's time goes, convolution by convolution (and linear layers).

use std::sync::Mutex;

/// The time an eval pass spent in each convolution and linear layer, and on which
/// kernel, gathered
/// while it is attached to the pass's probe ([`Probe::with_profile`](super::Probe::with_profile)).
///
/// Only passes on blocked activations record (unobserved eval passes on a processor
/// with vector kernels: see [`crate::nn::blocked`]); a convolution that runs on NCHW
/// tensors there (a custom layer's, ResNeXt's narrow groups) is not listed. When a
/// batch runs as micro-batches on several threads at once, their times add up: compare
/// a layer's share of the total rather than its time with the wall clock.
///
/// ```
/// use reflow::layer::{Layer, Probe};
/// use reflow::models::{ResNet, ResNetConfig};
/// use reflow::nn::{Profile, Tensor4};
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let profile = Profile::new();
/// let x = Tensor4::zeros((2, 3, 32, 32));
/// net.forward_with(&x, &mut Probe::none().with_profile(&profile))?;
/// for layer in profile.layers() {
///     println!("{} on {}: {:.3} ms", layer.name, layer.kernel, layer.seconds * 1e3);
/// }
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Profile {
    layers: Mutex<Vec<LayerTime>>,
}

/// One convolution's or linear layer's time in a [`Profile`], per kernel it ran on.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTime {
    /// The layer's path, as in the state dict (`layer1.0.conv1`).
    pub name: String,
    /// The kernel: `1x1`, `depthwise`, `direct`, `winograd` or `sparse` for a
    /// convolution; `gemm` or `sparse` for a linear layer.
    pub kernel: &'static str,
    /// Calls recorded.
    pub calls: usize,
    /// Their total time, in seconds.
    pub seconds: f64,
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Profile::default()
    }

    /// The layers recorded, in the order first seen.
    pub fn layers(&self) -> Vec<LayerTime> {
        self.lock().clone()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Adds a call of `name` on `kernel` that took `seconds`.
    pub(crate) fn record(&self, name: &str, kernel: &'static str, seconds: f64) {
        let mut layers = self.lock();
        match layers
            .iter_mut()
            .find(|l| l.name == name && l.kernel == kernel)
        {
            Some(l) => {
                l.calls += 1;
                l.seconds += seconds;
            }
            None => layers.push(LayerTime {
                name: name.to_string(),
                kernel,
                calls: 1,
                seconds,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LayerTime>> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
