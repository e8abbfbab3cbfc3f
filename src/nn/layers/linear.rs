//! Fully connected layer.

use super::{emit2, layer_context, ParamTensor, Tensor2};
use crate::error::{Error, Result};
use crate::exec::Par;
use crate::layer::LayerKind;
use crate::layer::{Probe, Site};
use crate::nn::engine::gemm::gemm_bt;
use crate::nn::engine::sparse::SparseForm;
use crate::nn::kernels::blocked::{from_blocked, to_blocked, Blocked, Store};
use crate::nn::kernels::blocked_sparse::{sparse_conv, SparseConv};
use crate::nn::kernels::{Isa, Kernels, LANES};
use crate::nn::runtime::{buffer, recycle_buffer};
use crate::nn::{Activation, Conv2dConfig};
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
    /// The non-zeros for the sparse kernel, and where it was measured faster.
    sparse: SparseForm,
}

impl Linear {
    /// A layer with zero weights (and bias), to be filled from a checkpoint.
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Self {
        Linear {
            weight: ParamTensor::filled(&[out_features, in_features], 0.0),
            bias: bias.then(|| ParamTensor::filled(&[out_features], 0.0)),
            sparse: SparseForm::default(),
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
        let start = probe.profile().map(|_| std::time::Instant::now());
        let o = self.out_features();
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let exec = probe.exec();
        let dense = || self.dense(xs, n, exec.par());
        // As a 1×1 convolution of `n` images of 1 × 1, on the sparse kernel as the
        // policy and the measurements decide (vector kernels only).
        let policy = exec.sparse();
        let config = Conv2dConfig::new(i, o, 1);
        let kernels = Isa::of(exec).kernels();
        let (y, sparse) = match (
            kernels,
            self.sparse.packed(&config, &self.weight.data, policy),
        ) {
            (Some(kernels), Some(packed)) => {
                let sparse = || self.sparse(kernels, packed, xs, n, exec.threads());
                let key = [n, 1, 1, exec.threads()];
                self.sparse.run(policy, key, dense, sparse)
            }
            _ => (dense(), false),
        };
        if let (Some(profile), Some(start)) = (probe.profile(), start) {
            let kernel = if sparse { "sparse" } else { "gemm" };
            profile.record(probe.path(), kernel, start.elapsed().as_secs_f64());
        }
        emit2(probe, LayerKind::Linear, Site::Output, &y);
        Ok(y)
    }
}

impl Linear {
    /// `x Wᵀ + b` by the dense product, `x` row-major `[n, in]`.
    fn dense(&self, xs: &[f32], n: usize, par: Par) -> Tensor2 {
        let (i, o) = (self.in_features(), self.out_features());
        let mut y = Array2::<f32>::zeros((n, o));
        let ys = y.as_slice_mut().expect("fresh array");
        gemm_bt(ys, xs, &self.weight.data, n, i, o, par);
        if let Some(b) = &self.bias {
            for row in ys.chunks_mut(o.max(1)) {
                row.iter_mut().zip(&b.data).for_each(|(v, &b)| *v += b);
            }
        }
        y
    }

    /// `x Wᵀ + b` on the sparse kernel (the images as positions), or `None` when it
    /// declines `x` (NaN or infinity).
    fn sparse(
        &self,
        kernels: Kernels,
        packed: &SparseConv,
        xs: &[f32],
        n: usize,
        threads: usize,
    ) -> Option<Tensor2> {
        let (i, o) = (self.in_features(), self.out_features());
        let (xb, yb) = (
            Blocked {
                n,
                c: i,
                h: 1,
                w: 1,
            },
            Blocked {
                n,
                c: o,
                h: 1,
                w: 1,
            },
        );
        // Pooled buffers: every value is written before it is read.
        let mut x = buffer(xb.len());
        to_blocked(xs, xb, &mut x[..xb.len()]);
        let padded = yb.blocks() * LANES;
        let scale = vec![1.0; padded];
        let mut shift = vec![0.0; padded];
        if let Some(b) = &self.bias {
            shift[..o].copy_from_slice(&b.data);
        }
        let store = Store {
            scale: &scale,
            shift: &shift,
            activation: Activation::Identity,
            residual: None,
        };
        let mut y = buffer(yb.len());
        let (xv, yv) = (&x[..xb.len()], &mut y[..yb.len()]);
        let out = sparse_conv(kernels, xv, xb, packed, [1, 1], store, yv, threads).then(|| {
            let mut out = Array2::<f32>::zeros((n, o));
            from_blocked(yv, yb, out.as_slice_mut().expect("fresh array"));
            out
        });
        recycle_buffer(x);
        recycle_buffer(y);
        out
    }

    /// Drops the sparse form of the weights, which no longer matches them.
    fn weights_changed(&mut self) {
        self.sparse = SparseForm::default();
    }
}

plain_layer!(Linear, Tensor2, Tensor2, weight_bias, then weights_changed);
