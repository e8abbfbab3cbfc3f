//! Convolutions on channel-blocked activations: which blocked kernel computes a
//! convolution, its weights packed once for it, and the call.

use super::{Convolution, Epilogue};
use crate::exec::Exec;
use crate::nn::blocked::BlockedTensor;
use crate::nn::engine::Conv2dConfig;
use crate::nn::kernels::blocked::{Blocked, Store};
use crate::nn::kernels::blocked_direct::{self, InputLayout};
use crate::nn::kernels::blocked_sparse::sparse_conv;
use crate::nn::kernels::blocked_winograd;
use crate::nn::kernels::{blocked_depthwise, blocked_pointwise};
use crate::nn::kernels::{Kernels, LANES};
use ndarray::ArrayView4;

/// The blocked kernel that computes a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockedKind {
    /// 1×1, stride 1, no padding, one group: one product over the positions.
    Pointwise,
    /// One filter per channel (groups = in = out channels).
    Depthwise,
    /// Any other convolution of one group, or of groups of whole blocks: the direct
    /// kernel, which also reads NCHW.
    Direct,
    /// 3 × 3, stride 1, one group, at least 16 channels in and out: Winograd's
    /// F(2×2, 3×3).
    Winograd,
}

impl BlockedKind {
    /// The kernel for `c`, if one computes it (not yet: dilation, and groups whose
    /// channels are not whole blocks, other than depthwise).
    pub(crate) fn of(c: &Conv2dConfig) -> Option<Self> {
        if c.dilation != [1, 1] {
            return None;
        }
        let one_by_one = c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0];
        let winograd = c.kernel == [3, 3] && c.stride == [1, 1] && c.padding[0] <= 2;
        if c.groups == 1 && one_by_one {
            Some(BlockedKind::Pointwise)
        } else if c.groups == 1 && winograd && c.in_channels.min(c.out_channels) >= 32 {
            Some(BlockedKind::Winograd)
        } else if c.groups == c.in_channels && c.groups == c.out_channels {
            Some(BlockedKind::Depthwise)
        } else if c.groups == 1 || Self::whole_blocks(c) {
            Some(BlockedKind::Direct)
        } else {
            None
        }
    }

    /// Whether each group's input and output channels are whole blocks of sixteen (a
    /// RegNet group of 16 channels is one block): the direct kernel then sums each
    /// output block over its group's blocks alone.
    fn whole_blocks(c: &Conv2dConfig) -> bool {
        let (gi, go) = (c.in_channels / c.groups, c.out_channels / c.groups);
        gi % LANES == 0 && go % LANES == 0
    }

    /// The kernel's name in a [`crate::nn::Profile`].
    pub(crate) fn name(self) -> &'static str {
        match self {
            BlockedKind::Pointwise => "1x1",
            BlockedKind::Depthwise => "depthwise",
            BlockedKind::Direct => "direct",
            BlockedKind::Winograd => "winograd",
        }
    }

    /// Whether the kernel reads an NCHW input as it is (else it needs blocks).
    pub(crate) fn reads_nchw(self) -> bool {
        self == BlockedKind::Direct
    }
}

/// A blocked convolution's input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BlockedInput<'a> {
    Blocked(&'a BlockedTensor),
    /// Values of `[N, C, H, W]`, only for [`BlockedKind::reads_nchw`].
    Nchw(&'a [f32], [usize; 4]),
}

impl<'a> BlockedInput<'a> {
    /// An NCHW view, for [`BlockedKind::reads_nchw`]; standard layout.
    pub(crate) fn nchw(x: ArrayView4<'a, f32>) -> Self {
        let (n, c, h, w) = x.dim();
        BlockedInput::Nchw(x.to_slice().expect("standard layout"), [n, c, h, w])
    }

    /// `[N, C, H, W]`.
    pub(crate) fn dims(&self) -> [usize; 4] {
        match self {
            BlockedInput::Blocked(b) => b.dims(),
            BlockedInput::Nchw(_, dims) => *dims,
        }
    }
}

impl Convolution<'_> {
    /// The weights as `kind`'s kernel reads them, packed on first use.
    fn blocked_weights(&self, kind: BlockedKind) -> &[f32] {
        let c = self.config;
        self.rearranged.blocked.get_or_init(|| match kind {
            BlockedKind::Pointwise => {
                blocked_pointwise::pack_pointwise(self.weight, c.out_channels, c.in_channels)
            }
            BlockedKind::Depthwise => {
                blocked_depthwise::pack_depthwise(self.weight, c.in_channels, c.kernel)
            }
            BlockedKind::Direct => blocked_direct::pack_direct(
                self.weight,
                c.out_channels,
                c.in_channels / c.groups,
                c.kernel,
            ),
            BlockedKind::Winograd => {
                blocked_winograd::pack_winograd(self.weight, c.out_channels, c.in_channels)
            }
        })
    }

    /// The convolution of `x` by `kind`'s kernel, with `epilogue` (and the bias) and
    /// `residual` (added before the activation) applied as it stores; or by the sparse
    /// kernel, as the [`crate::nn::SparsePolicy`] in force and the measurements decide. Also the
    /// name of the kernel that ran. The caller has checked the shapes: `x`'s channels,
    /// an output of `out_size`, and the residual's shape, that of the output.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_blocked(
        &self,
        kind: BlockedKind,
        x: BlockedInput<'_>,
        out_size: [usize; 2],
        epilogue: &Epilogue<'_>,
        residual: Option<&BlockedTensor>,
        kernels: Kernels,
        exec: Exec,
    ) -> (BlockedTensor, &'static str) {
        let threads = exec.threads();
        let c = self.config;
        let [n, ci, h, w] = x.dims();
        let xs = Blocked { n, c: ci, h, w };
        let ys = Blocked {
            n,
            c: c.out_channels,
            h: out_size[0],
            w: out_size[1],
        };
        let (scale, shift) = epilogue.blocked_affine(c.out_channels, self.bias);
        let store = Store {
            scale: &scale,
            shift: &shift,
            activation: epilogue.activation,
            residual: residual.map(BlockedTensor::values),
        };
        let dense = || self.run_dense(kind, x, ys, store, kernels, threads);
        let policy = exec.sparse();
        let form = &self.rearranged.sparse;
        let (BlockedInput::Blocked(b), Some(packed)) = (x, form.packed(c, self.weight, policy))
        else {
            return (dense(), kind.name());
        };
        let sparse = || {
            let mut y = BlockedTensor::overwritten(ys);
            let values = b.values();
            sparse_conv(
                kernels,
                values,
                xs,
                packed,
                out_size,
                store,
                y.values_mut(),
                threads,
            )
            .then_some(y)
        };
        let key = [n, h, w, threads];
        match form.run(policy, key, dense, sparse) {
            (y, true) => (y, "sparse"),
            (y, false) => (y, kind.name()),
        }
    }

    /// [`Convolution::run_blocked`] on `kind`'s dense kernel, into an output of shape
    /// `ys`.
    fn run_dense(
        &self,
        kind: BlockedKind,
        x: BlockedInput<'_>,
        ys: Blocked,
        store: Store<'_>,
        kernels: Kernels,
        threads: usize,
    ) -> BlockedTensor {
        let c = self.config;
        let [n, ci, h, w] = x.dims();
        let xs = Blocked { n, c: ci, h, w };
        let g = c.geometry([h, w], [ys.h, ys.w]);
        let weights = self.blocked_weights(kind);
        let mut y = BlockedTensor::overwritten(ys);
        let out = c.out_channels;
        match (kind, x) {
            (BlockedKind::Pointwise, BlockedInput::Blocked(x)) => blocked_pointwise::pointwise(
                kernels,
                x.values(),
                xs,
                weights,
                out,
                store,
                y.values_mut(),
                threads,
            ),
            (BlockedKind::Depthwise, BlockedInput::Blocked(x)) => blocked_depthwise::depthwise(
                kernels,
                x.values(),
                xs,
                weights,
                g,
                store,
                y.values_mut(),
                threads,
            ),
            (BlockedKind::Direct, x) => {
                let (values, layout) = match &x {
                    BlockedInput::Blocked(b) => (b.values(), InputLayout::Blocked),
                    BlockedInput::Nchw(values, _) => (*values, InputLayout::Nchw),
                };
                blocked_direct::direct(
                    kernels,
                    values,
                    (xs, layout, c.groups),
                    weights,
                    out,
                    g,
                    store,
                    y.values_mut(),
                    threads,
                )
            }
            (BlockedKind::Winograd, BlockedInput::Blocked(x)) => blocked_winograd::winograd(
                kernels,
                x.values(),
                xs,
                weights,
                out,
                c.padding,
                store,
                y.values_mut(),
                threads,
            ),
            (_, BlockedInput::Nchw(..)) => unreachable!("only the direct kernel reads NCHW"),
        }
        y
    }
}
