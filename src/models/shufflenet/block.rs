//! torchvision's ShuffleNetV2 `InvertedResidual`: two branches side by side, their
//! channels interleaved.

use crate::error::{Error, Result};
use crate::layer::{Layer, Probe};
use crate::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn, Sequential, Tensor4};
use ndarray::{s, Array4, Axis};

/// One block. With stride 1 the input's first half of the channels passes through
/// and `branch2` transforms the second half; with stride 2 `branch1` (depthwise 3×3,
/// 1×1) and `branch2` (1×1, depthwise 3×3, 1×1) both read the whole input. The two
/// halves are concatenated and shuffled in two groups (torchvision's
/// `channel_shuffle(cat(a, b), 2)`): the output's channels are a₀, b₀, a₁, b₁, ….
#[derive(Debug)]
pub(super) struct ShuffleBlock {
    branch1: Option<Sequential>,
    branch2: Sequential,
}

/// `conv → bn (→ ReLU)` as torchvision's `branch` sequences name them: the
/// convolution at `index`, its batch norm at `index + 1`.
fn unit(conv: Conv2dConfig, index: usize, relu: bool) -> Result<ConvBn> {
    let bn = BatchNorm2d::new(conv.out_channels, 1e-5);
    let activation = match relu {
        true => Activation::Relu,
        false => Activation::Identity,
    };
    let (c, b) = (index.to_string(), (index + 1).to_string());
    ConvBn::new(c, Conv2d::new(conv)?, b, bn, activation)
}

/// A depthwise 3×3 convolution of `c` channels.
fn depthwise(c: usize, stride: usize) -> Conv2dConfig {
    Conv2dConfig::new(c, c, 3).stride(stride).padding(1).groups(c)
}

impl ShuffleBlock {
    /// A block from `inp` to `out` channels (`out` even; `inp == out` at stride 1).
    pub(super) fn new(inp: usize, out: usize, stride: usize) -> Result<Self> {
        let b = out / 2;
        let branch1 = match stride {
            1 => None,
            _ => Some(
                Sequential::new()
                    .push("", unit(depthwise(inp, stride), 0, false)?)
                    .push("", unit(Conv2dConfig::new(inp, b, 1), 2, true)?),
            ),
        };
        let first = if stride == 1 { b } else { inp };
        let branch2 = Sequential::new()
            .push("", unit(Conv2dConfig::new(first, b, 1), 0, true)?)
            .push("", unit(depthwise(b, stride), 3, false)?)
            .push("", unit(Conv2dConfig::new(b, b, 1), 5, true)?);
        Ok(ShuffleBlock { branch1, branch2 })
    }

    /// The input's two halves of channels (a stride-1 block's inputs).
    fn halves(x: &Tensor4, probe: &Probe<'_>) -> Result<(Tensor4, Tensor4)> {
        let c = x.dim().1;
        if c % 2 == 1 {
            return Err(Error::shape(
                format!("{} (channel split)", probe.path()),
                "an even number of channels",
                x.shape(),
            ));
        }
        let (a, b) = x.view().split_at(Axis(1), c / 2);
        Ok((a.to_owned(), b.to_owned()))
    }

    /// Channels a₀, b₀, a₁, b₁, …: the concatenation of `a` and `b` shuffled in two
    /// groups.
    fn interleave(a: &Tensor4, b: &Tensor4, probe: &Probe<'_>) -> Result<Tensor4> {
        if a.dim() != b.dim() {
            return Err(Error::shape(
                format!("{} (branches)", probe.path()),
                format!("branch2's output shape {:?}", b.shape()),
                a.shape(),
            ));
        }
        let (n, c, h, w) = a.dim();
        let mut out = Array4::zeros((n, 2 * c, h, w));
        out.slice_mut(s![.., 0..;2, .., ..]).assign(a);
        out.slice_mut(s![.., 1..;2, .., ..]).assign(b);
        Ok(out)
    }
}

crate::params!(ShuffleBlock { branch1, branch2 });

impl Layer for ShuffleBlock {
    type Input = Tensor4;
    type Output = Tensor4;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let branch2 = &self.branch2;
        let (left, right) = match &self.branch1 {
            Some(branch1) => (
                probe.scoped("branch1", |p| branch1.forward_with(x, p))?,
                probe.scoped("branch2", |p| branch2.forward_with(x, p))?,
            ),
            None => {
                let (a, b) = Self::halves(x, probe)?;
                (a, probe.scoped("branch2", |p| branch2.forward_with(&b, p))?)
            }
        };
        Self::interleave(&left, &right, probe)
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        let branch2 = &mut self.branch2;
        let (left, right) = match &mut self.branch1 {
            Some(branch1) => (
                probe.scoped("branch1", |p| branch1.forward_train(x, p))?,
                probe.scoped("branch2", |p| branch2.forward_train(x, p))?,
            ),
            None => {
                let (a, b) = Self::halves(x, probe)?;
                let b = probe.scoped("branch2", |p| branch2.forward_train(&b, p))?;
                (a, b)
            }
        };
        Self::interleave(&left, &right, probe)
    }
}
