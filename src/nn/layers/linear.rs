//! Fully connected layer.

use super::{emit2, layer_context, ParamTensor, Tensor2};
use crate::error::{Error, Result};
use crate::layer::LayerKind;
use crate::layer::{Probe, Site};
use crate::nn::engine::gemm::gemm_bt;
use ndarray::Array2;

/// `y = x Wᵀ + b` on `[N, in]` matrices: PyTorch's `nn.Linear`.
///
/// Parameters: `weight` `[out, in]` (role [`ParamRole::Weight`](crate::layer::ParamRole::Weight)) and, when present,
/// `bias` `[out]`.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::Linear;
/// use ndarray::Array2;
///
/// let fc = Linear::new(512, 10, true);
/// assert_eq!(fc.forward(&Array2::zeros((4, 512)))?.dim(), (4, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    weight: ParamTensor,
    bias: Option<ParamTensor>,
}

impl Linear {
    /// A layer with zero weights (and bias), to be filled from a checkpoint.
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Self {
        Linear {
            weight: ParamTensor::filled(&[out_features, in_features], 0.0),
            bias: bias.then(|| ParamTensor::filled(&[out_features], 0.0)),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.shape[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }

    fn run(&self, x: &Tensor2, probe: &mut Probe<'_>) -> Result<Tensor2> {
        let (n, i) = x.dim();
        if i != self.in_features() {
            return Err(Error::shape(
                layer_context(probe),
                format!("[_, {}]", self.in_features()),
                x.shape(),
            ));
        }
        emit2(probe, LayerKind::Linear, Site::Input, x);
        let o = self.out_features();
        let x = x.as_standard_layout();
        let mut y = Array2::<f32>::zeros((n, o));
        let ys = y.as_slice_mut().expect("fresh array");
        let xs = x.as_slice().expect("standard layout");
        gemm_bt(
            ys,
            xs,
            &self.weight.data,
            n,
            i,
            o,
            crate::nn::runtime::product_threads(),
        );
        if let Some(b) = &self.bias {
            for row in ys.chunks_mut(o.max(1)) {
                row.iter_mut().zip(&b.data).for_each(|(v, &b)| *v += b);
            }
        }
        emit2(probe, LayerKind::Linear, Site::Output, &y);
        Ok(y)
    }
}

plain_layer!(Linear, Tensor2, Tensor2, weight_bias);
