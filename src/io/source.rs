//! IDX images as an [`ImageSource`](crate::data::ImageSource).

use super::IdxImages;
use crate::data::Tensor4;
use crate::data::{check_indices, runs, stack, ImageSource, Normalization};
use crate::error::Result;

impl ImageSource for IdxImages {
    fn len(&self) -> usize {
        IdxImages::len(self)
    }

    fn image_dims(&self) -> [usize; 3] {
        let [_, c, h, w] = self.dims();
        [c, h, w]
    }

    fn tensor(&self, indices: &[usize], norm: &Normalization) -> Result<Tensor4> {
        check_indices(indices, IdxImages::len(self))?;
        let parts = runs(indices)
            .map(|r| self.to_tensor(r, norm))
            .collect::<Result<Vec<_>>>()?;
        stack(parts, ImageSource::image_dims(self))
    }
}
