//! Element-wise activations.

use super::Tensor4;
use crate::error::Result;
use crate::layer::{Layer, NormStats, NormStatsMut, NormUpdate, Param, ParamMut, Probe};

/// `max(x, 0)` element-wise: PyTorch's `nn.ReLU`. It has no parameters and reports no
/// taps (its input and output are the neighbouring layers' taps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relu;

impl Layer for Relu {
    type Input = Tensor4;
    type Output = Tensor4;

    fn forward_with(&self, x: &Tensor4, _probe: &mut Probe<'_>) -> Result<Tensor4> {
        Ok(x.mapv(|v| v.max(0.0)))
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        _update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        self.forward_with(x, probe)
    }

    fn visit_params(&self, _f: &mut dyn FnMut(Param<'_>)) {}

    fn visit_params_mut(&mut self, _f: &mut dyn FnMut(ParamMut<'_>)) {}

    fn visit_norms(&self, _f: &mut dyn FnMut(&str, NormStats<'_>)) {}

    fn visit_norms_mut(&mut self, _f: &mut dyn FnMut(&str, NormStatsMut<'_>)) {}
}
