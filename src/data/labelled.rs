//! Labelled batches: what an accuracy is measured on.

use crate::error::Result;

/// Batches of inputs `I` with one class label per sample, walked in order. Implemented
/// for batches in memory (`[(I, Vec<usize>)]`) and for a
/// [`Dataset`](crate::io::Dataset) read in batches
/// ([`Dataset::labelled`](crate::io::Dataset::labelled)); implement it for any other source.
pub trait LabelledData<I> {
    /// Calls `f` with every batch and its labels, stopping at the first error.
    fn try_for_each_labelled(&self, f: &mut dyn FnMut(&I, &[usize]) -> Result<()>) -> Result<()>;
}

impl<I> LabelledData<I> for [(I, Vec<usize>)] {
    fn try_for_each_labelled(&self, f: &mut dyn FnMut(&I, &[usize]) -> Result<()>) -> Result<()> {
        self.iter().try_for_each(|(x, labels)| f(x, labels))
    }
}

impl<I> LabelledData<I> for Vec<(I, Vec<usize>)> {
    fn try_for_each_labelled(&self, f: &mut dyn FnMut(&I, &[usize]) -> Result<()>) -> Result<()> {
        self.as_slice().try_for_each_labelled(f)
    }
}
