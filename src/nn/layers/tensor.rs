//! Tensors of any rank, so that one chain can hold 4-d and 2-d layers.

use super::{Tensor2, Tensor4};
use crate::error::{Error, Result};
use std::any::Any;
use std::borrow::Cow;

/// An activation tensor whose rank is known at run time: an NCHW feature map or an
/// `[N, features]` matrix. It is the input and output of the layers that work on
/// either ([`Activation`](crate::nn::Activation), [`Dropout`](crate::nn::Dropout),
/// [`Identity`](crate::nn::Identity)), and what a [`Sequential`](crate::nn::Sequential)
/// passes between its children.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::{Activation, AnyTensor, Tensor2};
///
/// let x = AnyTensor::from(Tensor2::from_elem((2, 3), -1.0));
/// let y = Activation::Relu.forward(&x)?;
/// assert_eq!(y.into_matrix().unwrap().sum(), 0.0);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum AnyTensor {
    /// `[N, C, H, W]`.
    Nchw(Tensor4),
    /// `[N, features]`.
    Matrix(Tensor2),
}

impl AnyTensor {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyTensor::Nchw(t) => t.shape(),
            AnyTensor::Matrix(t) => t.shape(),
        }
    }

    /// The feature map, if this is one.
    pub fn into_nchw(self) -> Option<Tensor4> {
        match self {
            AnyTensor::Nchw(t) => Some(t),
            AnyTensor::Matrix(_) => None,
        }
    }

    /// The matrix, if this is one.
    pub fn into_matrix(self) -> Option<Tensor2> {
        match self {
            AnyTensor::Matrix(t) => Some(t),
            AnyTensor::Nchw(_) => None,
        }
    }

    /// Applies `f` to every value, in place.
    pub(crate) fn map_in_place(&mut self, f: impl Fn(&mut [f32]) + Send + Sync) {
        use rayon::prelude::*;
        let values = match self {
            AnyTensor::Nchw(t) => t.as_slice_mut(),
            AnyTensor::Matrix(t) => t.as_slice_mut(),
        };
        match values {
            Some(v) => v.par_chunks_mut(1 << 14).for_each(&f),
            None => {
                // A tensor of another layout: made standard first.
                *self = match std::mem::replace(self, AnyTensor::Matrix(Tensor2::zeros((0, 0)))) {
                    AnyTensor::Nchw(t) => AnyTensor::Nchw(t.as_standard_layout().into_owned()),
                    AnyTensor::Matrix(t) => AnyTensor::Matrix(t.as_standard_layout().into_owned()),
                };
                self.map_in_place(f)
            }
        }
    }
}

impl From<Tensor4> for AnyTensor {
    fn from(t: Tensor4) -> Self {
        AnyTensor::Nchw(t)
    }
}

impl From<Tensor2> for AnyTensor {
    fn from(t: Tensor2) -> Self {
        AnyTensor::Matrix(t)
    }
}

/// A tensor type a [`Sequential`](crate::nn::Sequential) can pass between its
/// children: [`Tensor4`], [`Tensor2`] or [`AnyTensor`].
pub trait Rank: Clone + Send + Sync + 'static {
    /// What a chain outputs after a layer producing `Self`, when it output `Before`
    /// until then: `Self`, except for [`AnyTensor`] (a layer that keeps the rank it
    /// is given), which keeps `Before`.
    type After<Before: Rank>: Rank;

    /// The rank's name in errors (`"4-d"`, `"2-d"`, `"any rank"`).
    const NAME: &'static str;

    /// Wraps the tensor.
    fn into_any(self) -> AnyTensor;

    /// The tensor, if `t` has this rank.
    fn from_any(t: AnyTensor) -> Option<Self>;

    /// A borrow of the tensor, if `t` has this rank.
    fn view(t: &AnyTensor) -> Option<&Self>;
}

impl Rank for Tensor4 {
    type After<Before: Rank> = Tensor4;
    const NAME: &'static str = "4-d";

    fn into_any(self) -> AnyTensor {
        AnyTensor::Nchw(self)
    }

    fn from_any(t: AnyTensor) -> Option<Self> {
        t.into_nchw()
    }

    fn view(t: &AnyTensor) -> Option<&Self> {
        match t {
            AnyTensor::Nchw(t) => Some(t),
            AnyTensor::Matrix(_) => None,
        }
    }
}

impl Rank for Tensor2 {
    type After<Before: Rank> = Tensor2;
    const NAME: &'static str = "2-d";

    fn into_any(self) -> AnyTensor {
        AnyTensor::Matrix(self)
    }

    fn from_any(t: AnyTensor) -> Option<Self> {
        t.into_matrix()
    }

    fn view(t: &AnyTensor) -> Option<&Self> {
        match t {
            AnyTensor::Matrix(t) => Some(t),
            AnyTensor::Nchw(_) => None,
        }
    }
}

impl Rank for AnyTensor {
    type After<Before: Rank> = Before;
    const NAME: &'static str = "any rank";

    fn into_any(self) -> AnyTensor {
        self
    }

    fn from_any(t: AnyTensor) -> Option<Self> {
        Some(t)
    }

    fn view(t: &AnyTensor) -> Option<&Self> {
        Some(t)
    }
}

/// `x` (a [`Tensor4`], a [`Tensor2`] or an [`AnyTensor`]) as the `T` a layer takes:
/// borrowed when it has that type or wraps it, copied only to wrap a tensor in an
/// [`AnyTensor`]. An error naming `context` when the ranks differ.
pub(crate) fn input_as<'a, T: Rank>(x: &'a dyn Any, context: &str) -> Result<Cow<'a, T>> {
    if let Some(t) = x.downcast_ref::<T>() {
        return Ok(Cow::Borrowed(t));
    }
    let found = if let Some(any) = x.downcast_ref::<AnyTensor>() {
        if let Some(t) = T::view(any) {
            return Ok(Cow::Borrowed(t));
        }
        any.shape().to_vec()
    } else if let Some(t) = x.downcast_ref::<Tensor4>() {
        if let Some(t) = T::from_any(AnyTensor::Nchw(t.clone())) {
            return Ok(Cow::Owned(t));
        }
        t.shape().to_vec()
    } else if let Some(t) = x.downcast_ref::<Tensor2>() {
        if let Some(t) = T::from_any(AnyTensor::Matrix(t.clone())) {
            return Ok(Cow::Owned(t));
        }
        t.shape().to_vec()
    } else {
        vec![]
    };
    Err(Error::shape(
        context.to_string(),
        format!("a {} tensor", T::NAME),
        found.as_slice(),
    ))
}
