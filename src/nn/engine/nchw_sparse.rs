//! Pruned convolutions on NCHW activations — the layer-by-layer pass, the signal
//! statistics and REFLOW's calibration — on the sparse kernel
//! ([`crate::nn::kernels::blocked_sparse`]), between a reorder to blocks and one back.
//!
//! Which calls take it is a rule, not a timing: under [`SparsePolicy::Measured`] every
//! convolution at most [`SparsePolicy::MEASURED_DENSITY`] dense (as the blocked pass
//! measures only those) that does at least [`MIN_WORK`] multiply-adds per value it
//! reorders, on maps of at most [`MAX_PLANE`] positions; under [`SparsePolicy::Always`] every one it can
//! compute; under [`SparsePolicy::Never`] none. Calibration writes its statistics into
//! the checkpoint, so they must not depend on which kernel a noisy timing happened to
//! pick: the same weights and input give the same statistics on every run.
//!
//! On larger maps the reorders around the call cost more than the kernel saves: REFLOW
//! on a ResNet-50 with every convolution 20 % dense ran 0.93× as fast with its 56 × 56
//! layers and stem on the sparse kernel as with none, 1.23× with only its 28 × 28 and
//! smaller layers (batch 16, one thread, AMD EPYC with AVX2).

use super::{Batch, Convolution, Epilogue};
use crate::exec::SparsePolicy;
use crate::nn::kernels::blocked::{from_blocked, to_blocked, Blocked, Store};
use crate::nn::kernels::blocked_sparse::{sparse_conv, SparseConv};
use crate::nn::kernels::{plain, Isa, Kernels};
use crate::nn::runtime::{buffer, recycle_buffer, Activation};
use crate::stats::plane_moments;

/// The fewest non-zero multiply-adds per value reordered (a position's input and
/// output channels) for which the measured policy runs a pruned convolution's NCHW
/// calls on the sparse kernel: ResNet-50's pruned layer3 and layer4 do 70–200,
/// MobileNetV2's narrow 1×1 layers 8–25 (and calibrated at 0.87× of dense on it).
const MIN_WORK: f64 = 32.0;

/// The most input positions per image (28 × 28) on which the measured policy runs a
/// pruned convolution's NCHW calls on the sparse kernel.
const MAX_PLANE: usize = 28 * 28;

impl Convolution<'_> {
    /// The packed weights and the instruction set when `policy` runs this
    /// convolution's NCHW calls on `isa` on the sparse kernel, for inputs of `size`
    /// (see the module's documentation); `None` for dense.
    pub(crate) fn nchw_sparse(
        &self,
        isa: Isa,
        policy: SparsePolicy,
        size: [usize; 2],
    ) -> Option<(&SparseConv, Kernels)> {
        let kernels = isa.kernels()?;
        let packed = self
            .rearranged
            .sparse
            .packed(self.config, self.weight, policy)?;
        let c = self.config;
        // The non-zero multiply-adds per output position, per value reordered there.
        let work = packed.nonzeros() as f64 / (c.in_channels + c.out_channels).max(1) as f64;
        let suits = work >= MIN_WORK && size[0] * size[1] <= MAX_PLANE;
        (policy != SparsePolicy::Measured || suits).then_some((packed, kernels))
    }

    /// [`Convolution::run`] on the sparse kernel, its input unmapped: `batch.y` gets
    /// the convolution with its bias and `epilogue`, and `moments` (`[N × O]`), when
    /// given, each output plane's mean and sum of squared deviations before the
    /// activation. Returns `false`, the output unspecified, when the kernel declines the
    /// input (a NaN or an infinity, which the dense kernels carry into every output its
    /// zero weights touch): the caller runs a dense path.
    pub(crate) fn run_sparse(
        &self,
        (packed, kernels): (&SparseConv, Kernels),
        batch: Batch<'_>,
        epilogue: &Epilogue<'_>,
        moments: Option<&mut [(f64, f64)]>,
        threads: usize,
    ) -> bool {
        let Batch { x, y, n, shape } = batch;
        let c = self.config;
        let xs = Blocked {
            n,
            c: c.in_channels,
            h: shape.h,
            w: shape.w,
        };
        let ys = Blocked {
            n,
            c: c.out_channels,
            h: shape.ho,
            w: shape.wo,
        };
        let (scale, shift) = epilogue.blocked_affine(c.out_channels, self.bias);
        // The moments are of the values before the activation: it follows them.
        let store = Store {
            scale: &scale,
            shift: &shift,
            activation: match moments {
                Some(_) => Activation::Identity,
                None => epilogue.activation,
            },
            residual: None,
        };
        // Pooled buffers: every value is written before it is read.
        let (mut xb, mut yb) = (buffer(xs.len()), buffer(ys.len()));
        let (xv, yv) = (&mut xb[..xs.len()], &mut yb[..ys.len()]);
        to_blocked(x, xs, xv);
        let out_size = [shape.ho, shape.wo];
        let ran = sparse_conv(kernels, xv, xs, packed, out_size, store, yv, threads);
        if ran {
            from_blocked(yv, ys, y);
        }
        recycle_buffer(xb);
        recycle_buffer(yb);
        if !ran {
            return false;
        }
        if let Some(moments) = moments {
            let spatial = (shape.ho * shape.wo).max(1);
            for (m, plane) in moments.iter_mut().zip(y.chunks_exact(spatial)) {
                *m = plane_moments(plane);
            }
            plain::activate(Isa::Kernels(kernels), y, epilogue.activation);
        }
        true
    }
}
