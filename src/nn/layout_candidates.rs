//! Not part of the API: the channel-blocked (NCHW16c) kernels that `docs/engine.md`
//! measures against the NCHW engine, open to `examples/bench_layouts.rs` until the
//! engine runs on them. Anything here may change or go in any release.

use crate::error::{Error, Result};
use crate::nn::engine::blocked::BlockedKind;
use crate::nn::kernels::blocked::{self, Blocked, Store};
use crate::nn::kernels::blocked_direct::{self, InputLayout};
use crate::nn::kernels::blocked_sparse::{sparse_conv, SparseConv};
use crate::nn::kernels::blocked_winograd;
use crate::nn::kernels::{blocked_depthwise, blocked_pointwise};
use crate::nn::kernels::{Isa, Kernels, LANES};
use crate::nn::layers::window_output_len;
use crate::nn::{Activation, Conv2dConfig};

/// Values of an `[n, c, h, w]` tensor in the blocked layout `[n][⌈c/16⌉][h][w][16]`.
pub fn blocked_len(n: usize, c: usize, h: usize, w: usize) -> usize {
    Blocked { n, c, h, w }.len()
}

/// `x` (`[n, c, h, w]`, NCHW) into `y` in the blocked layout.
pub fn to_blocked(x: &[f32], [n, c, h, w]: [usize; 4], y: &mut [f32]) -> Result<()> {
    let s = Blocked { n, c, h, w };
    check_len("x", x.len(), n * c * h * w)?;
    check_len("y", y.len(), s.len())?;
    blocked::to_blocked(x, s, y);
    Ok(())
}

/// `x` in the blocked layout into `y` (`[n, c, h, w]`, NCHW).
pub fn from_blocked(x: &[f32], [n, c, h, w]: [usize; 4], y: &mut [f32]) -> Result<()> {
    let s = Blocked { n, c, h, w };
    check_len("x", x.len(), s.len())?;
    check_len("y", y.len(), n * c * h * w)?;
    blocked::from_blocked(x, s, y);
    Ok(())
}

/// The output size of `c` for an `h × w` input.
fn output_size(c: &Conv2dConfig, h: usize, w: usize) -> Option<(usize, usize)> {
    let axis = |size: usize, a: usize| {
        window_output_len(size, c.kernel[a], c.stride[a], c.padding[a], c.dilation[a])
    };
    Some((axis(h, 0)?, axis(w, 1)?))
}

/// The blocked input and the output size of `c` on `x` (`[n, in, h, w]`) into `y`,
/// once their lengths are checked.
fn check_call(
    c: &Conv2dConfig,
    (x, [n, h, w]): (&[f32], [usize; 3]),
    y: &[f32],
) -> Result<(Blocked, [usize; 2])> {
    let xs = Blocked {
        n,
        c: c.in_channels,
        h,
        w,
    };
    let (ho, wo) =
        output_size(c, h, w).ok_or_else(|| Error::invalid("x", "smaller than the kernel"))?;
    check_len("x", x.len(), xs.len())?;
    check_len("y", y.len(), blocked_len(n, c.out_channels, ho, wo))?;
    Ok((xs, [ho, wo]))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("{got} values, expected {want}"),
        ))
    }
}

/// The store both convolutions fuse: `relu?(y·scale + shift)` per output channel, with
/// `scale` and `shift` padded with zeros to whole blocks, as the kernels read them.
#[derive(Debug, Clone)]
struct OwnedStore {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl OwnedStore {
    fn new(scale: &[f32], shift: &[f32], relu: bool, channels: usize) -> Result<Self> {
        check_len("scale", scale.len(), channels)?;
        check_len("shift", shift.len(), channels)?;
        let whole = |v: &[f32]| {
            let mut v = v.to_vec();
            v.resize(channels.div_ceil(LANES) * LANES, 0.0);
            v
        };
        Ok(OwnedStore {
            scale: whole(scale),
            shift: whole(shift),
            relu,
        })
    }

    fn view(&self) -> Store<'_> {
        Store {
            scale: &self.scale,
            shift: &self.shift,
            activation: match self.relu {
                true => Activation::Relu,
                false => Activation::Identity,
            },
            residual: None,
        }
    }
}

/// The kernels' instruction set: the widest within the cap, which must have vectors.
fn vector_kernels() -> Result<Kernels> {
    Isa::of(crate::exec::Exec::defaults())
        .kernels()
        .ok_or_else(|| Error::unsupported("level", "the blocked kernels need a vector level"))
}

/// A convolution with its weights packed for the blocked kernel the engine would pick
/// (1×1, depthwise, direct or Winograd), and a per-channel `relu?(y·scale + shift)`
/// fused into the store.
#[derive(Debug, Clone)]
pub struct BlockedConv {
    config: Conv2dConfig,
    kind: BlockedKind,
    packed: Vec<f32>,
    store: OwnedStore,
}

impl BlockedConv {
    /// Packs `weight` (`[out, in / groups, kh, kw]`); `scale` and `shift` per output
    /// channel. The configuration must have one group, groups of whole blocks of 16
    /// channels, or be depthwise (groups = in = out), and no dilation.
    pub fn new(
        config: Conv2dConfig,
        weight: &[f32],
        scale: &[f32],
        shift: &[f32],
        relu: bool,
    ) -> Result<Self> {
        config.validate()?;
        let c = config;
        check_len("weight", weight.len(), c.weight_shape().iter().product())?;
        let store = OwnedStore::new(scale, shift, relu, c.out_channels)?;
        let kind = BlockedKind::of(&c).ok_or_else(|| {
            Error::unsupported(
                "config",
                "the blocked kernels compute one-group and depthwise convolutions",
            )
        })?;
        let packed = match kind {
            BlockedKind::Pointwise => {
                blocked_pointwise::pack_pointwise(weight, c.out_channels, c.in_channels)
            }
            BlockedKind::Depthwise => {
                blocked_depthwise::pack_depthwise(weight, c.in_channels, c.kernel)
            }
            BlockedKind::Direct => blocked_direct::pack_direct(
                weight,
                c.out_channels,
                c.in_channels / c.groups,
                c.kernel,
            ),
            BlockedKind::Winograd => {
                blocked_winograd::pack_winograd(weight, c.out_channels, c.in_channels)
            }
        };
        Ok(BlockedConv {
            config,
            kind,
            packed,
            store,
        })
    }

    /// The output size for an `h × w` input.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        output_size(&self.config, h, w)
    }

    /// Convolves `x` (blocked `[n, in, h, w]`) into `y` (blocked `[n, out, ho, wo]`)
    /// on `threads` threads (of rayon's current pool) at the crate's kernel level.
    pub fn run(
        &self,
        x: &[f32],
        [n, h, w]: [usize; 3],
        y: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        let c = &self.config;
        let (xs, out_size) = check_call(c, (x, [n, h, w]), y)?;
        let (kernels, store) = (vector_kernels()?, self.store.view());
        let g = c.geometry([h, w], out_size);
        let (o, packed) = (c.out_channels, &self.packed);
        match self.kind {
            BlockedKind::Pointwise => {
                blocked_pointwise::pointwise(kernels, x, xs, packed, o, store, y, threads)
            }
            BlockedKind::Depthwise => {
                blocked_depthwise::depthwise(kernels, x, xs, packed, g, store, y, threads)
            }
            BlockedKind::Direct => {
                let xin = (xs, InputLayout::Blocked, c.groups);
                blocked_direct::direct(kernels, x, xin, packed, o, g, store, y, threads)
            }
            BlockedKind::Winograd => {
                let p = c.padding;
                blocked_winograd::winograd(kernels, x, xs, packed, o, p, store, y, threads)
            }
        }
        Ok(())
    }
}

/// A convolution with its non-zero weights packed for the sparse kernel, on blocked
/// activations (position tiles transposed into lanes), the store fused.
#[derive(Debug, Clone)]
pub struct SparseBlockedConv {
    config: Conv2dConfig,
    packed: SparseConv,
    store: OwnedStore,
}

impl SparseBlockedConv {
    /// Keeps the non-zeros of `weight` (`[out, in / groups, kh, kw]`); `scale` and
    /// `shift` per output channel.
    pub fn new(
        config: Conv2dConfig,
        weight: &[f32],
        scale: &[f32],
        shift: &[f32],
        relu: bool,
    ) -> Result<Self> {
        config.validate()?;
        if config.dilation != [1, 1] {
            return Err(Error::unsupported(
                "config",
                "the sparse blocked kernel has no dilation",
            ));
        }
        let (o, c, [kh, kw]) = (config.out_channels, config.in_channels, config.kernel);
        check_len("weight", weight.len(), o * c / config.groups * kh * kw)?;
        let packed = SparseConv::new(weight, config.geometry([0, 0], [0, 0]))
            .ok_or_else(|| Error::unsupported("config", "too large for the sparse kernel"))?;
        Ok(SparseBlockedConv {
            config,
            packed,
            store: OwnedStore::new(scale, shift, relu, o)?,
        })
    }

    /// Convolves `x` (blocked `[n, in, h, w]`) into `y` (blocked `[n, out, ho, wo]`).
    pub fn run(
        &self,
        x: &[f32],
        [n, h, w]: [usize; 3],
        y: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        let (xs, out_size) = check_call(&self.config, (x, [n, h, w]), y)?;
        let (kernels, store) = (vector_kernels()?, self.store.view());
        if !sparse_conv(kernels, x, xs, &self.packed, out_size, store, y, threads) {
            return Err(Error::invalid("x", "not finite, or too large"));
        }
        Ok(())
    }
}
