//! Files: safetensors checkpoints and IDX image/label data.
//!
//! - Checkpoints: [`StateDict::read_safetensors`](crate::StateDict::read_safetensors)
//!   and [`StateDict::write_safetensors`](crate::StateDict::write_safetensors) (F32,
//!   F16, BF16 and F64 read as `f32`; writes are atomic);
//!   [`StateDict::write_safetensors_as`](crate::StateDict::write_safetensors_as) with
//!   [`SaveFormat::Compressed`] writes sparse weights in compressed-tensors' bitmask
//!   layout, which the reader rebuilds dense.
//! - Data: [`IdxImages`], [`IdxLabels`], [`Dataset`] and [`Normalization`] for the
//!   MNIST / Fashion-MNIST format, raw or gzip-compressed; [`read_cifar`] for
//!   CIFAR-10's and CIFAR-100's binary files; `NpyImages` and `read_npy_labels` for
//!   NumPy arrays (feature `npy`); `ImageFolder` for folders of JPEG and PNG images
//!   in torchvision's layout (feature `image`), with torchvision's evaluation
//!   preprocessing in [`EvalTransform`]; [`ImageSource`], any source of images by
//!   index, and [`LabelledData`], any source of labelled batches.

mod atomic;
mod budget;
mod cifar;
mod compressed;
#[cfg(feature = "image")]
mod decode;
mod encoding;
mod file;
#[cfg(feature = "image")]
mod folder;
mod idx;
mod labelled;
#[cfg(feature = "npy")]
mod npy;
mod safetensors;
mod source;
mod transform;

pub(crate) use crate::data::numel;
pub use crate::data::LabelledData;
pub use crate::data::{FloatImages, ImageSource, Normalization, MIN_STD};
pub use atomic::write_atomic;
#[cfg(feature = "npy")]
pub(crate) use budget::byte_size;
#[cfg(feature = "image")]
pub(crate) use budget::is_large_image;
pub use budget::{check_image_pixels, MAX_IMAGE_PIXELS, REFUSED_IMAGE_PIXELS};
pub use cifar::{read_cifar, CifarKind, CifarSplit};
#[cfg(feature = "image")]
pub use decode::read_image;
#[cfg(feature = "image")]
pub use folder::ImageFolder;
pub use idx::{Batch, Dataset, IdxImages, IdxLabels};
pub use labelled::LabelledBatches;
#[cfg(feature = "npy")]
pub use npy::{read_npy_labels, NpyImages};
pub use safetensors::SaveFormat;
pub use transform::{EvalTransform, Pixels};
