//! Element-wise activations.

use super::Tensor4;
use crate::error::Result;
use crate::layer::Probe;

/// `max(x, 0)` element-wise: PyTorch's `nn.ReLU` (NaN stays NaN). It has no parameters and reports no
/// taps (its input and output are the neighbouring layers' taps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relu;

impl Relu {
    fn run(&self, x: &Tensor4, _probe: &mut Probe<'_>) -> Result<Tensor4> {
        Ok(x.mapv(crate::nn::runtime::relu))
    }
}

plain_layer!(Relu, Tensor4, Tensor4, stateless);
