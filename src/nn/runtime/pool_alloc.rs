//! Reusing the memory of intermediate activations.
//!
//! A forward pass allocates one tensor per layer and drops it one layer later. Large
//! allocations go back to the operating system when freed, so each new one costs page
//! faults (at batch 256, more time than zeroing the memory). Composite layers hand
//! the tensors they no longer need to [`recycle`]; [`overwritten`] takes memory from
//! this thread's few recycled buffers before asking the allocator.

use ndarray::{Array4, ShapeBuilder};

type Tensor4 = Array4<f32>;
use std::cell::RefCell;

/// Recycled buffers kept per thread, at most.
const KEPT: usize = 8;

/// Buffers kept per thread whatever their size; the others only while all the kept
/// buffers together stay under [`KEPT_BYTES`]. Four buffers cover a residual block's
/// live tensors (input, two convolution outputs, shortcut), so that a pass in small
/// micro-batches never allocates; two cap the memory kept for whole-batch passes of
/// large networks.
const KEPT_ANY_SIZE: usize = 2;

/// See [`KEPT_ANY_SIZE`].
const KEPT_BYTES: usize = 64 << 20;

/// A recycled buffer goes to a tensor at most this many times smaller.
const WASTE: usize = 4;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// An NCHW tensor for a layer that writes every element: in recycled memory, with the
/// values a previous tensor left there, when a large enough buffer is free; zeros
/// otherwise. Skipping the zero fill saves a pass over the output.
///
/// A recycled buffer may be longer than the tensor: the tensor then uses its first
/// elements (standard layout, so [`ndarray::ArrayBase::as_slice`] holds exactly the
/// tensor), and the buffer keeps its length for the next, possibly larger, tensor
/// without being zeroed again.
pub(crate) fn overwritten(shape: (usize, usize, usize, usize)) -> Tensor4 {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    if len == 0 {
        // An empty tensor (e.g. a batch of no images) needs no memory.
        return Tensor4::zeros(shape);
    }
    let data = buffer(len);
    let (_, c, h, w) = shape;
    let strides = (c * h * w, h * w, w, 1);
    Array4::from_shape_vec(shape.strides(strides), data).expect("the buffer holds the shape")
}

/// A buffer of at least `len` values for a tensor that writes every element, as
/// [`overwritten`] takes it: recycled when one is free, its values whatever a previous
/// tensor left; zeros where it had to grow.
pub(crate) fn buffer(len: usize) -> Vec<f32> {
    let recycled = BUFFERS.with_borrow_mut(|buffers| {
        // The smallest buffer that fits without zeroing; else the largest, to grow. Not
        // one more than `WASTE` times too large: a small tensor that is dropped rather
        // than recycled (a squeeze-excitation's gates) would take a large buffer away.
        let fits = buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len && b.len() <= WASTE * len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let best = fits.or_else(|| {
            (0..buffers.len())
                .filter(|&i| buffers[i].capacity() >= len && buffers[i].len() <= WASTE * len)
                .max_by_key(|&i| buffers[i].len())
        })?;
        Some(buffers.swap_remove(best))
    });
    let mut data = recycled.unwrap_or_default();
    if data.len() < len {
        // Zeros only where the buffer was shorter.
        data.resize(len, 0.0);
    }
    data
}

/// Gives `tensor`'s memory back for reuse by [`zeros`] on this thread.
pub(crate) fn recycle(tensor: Tensor4) {
    recycle_buffer(tensor.into_raw_vec_and_offset().0);
}

/// Gives a buffer back for reuse by [`buffer`] and [`overwritten`] on this thread.
pub(crate) fn recycle_buffer(data: Vec<f32>) {
    if data.capacity() == 0 {
        return;
    }
    BUFFERS.with_borrow_mut(|buffers| {
        let bytes = |b: &Vec<f32>| b.capacity() * std::mem::size_of::<f32>();
        let kept: usize = buffers.iter().map(bytes).sum();
        if buffers.len() < KEPT_ANY_SIZE
            || (buffers.len() < KEPT && kept + bytes(&data) <= KEPT_BYTES)
        {
            buffers.push(data);
        } else if let Some(smallest) = buffers.iter_mut().min_by_key(|b| b.capacity()) {
            if smallest.capacity() < data.capacity() {
                *smallest = data;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_tensor_does_not_take_a_large_buffer() {
        // On a thread of its own: the pool is per thread.
        std::thread::spawn(|| {
            let large = buffer(1 << 20);
            let address = large.as_ptr();
            recycle_buffer(large);
            // A tensor a hundred times smaller gets fresh memory, and the large buffer
            // stays for the next large tensor.
            let small = buffer(1 << 13);
            assert_ne!(small.as_ptr(), address);
            let again = buffer(1 << 19);
            assert_eq!(again.as_ptr(), address, "the large buffer was kept");
            assert!(again.len() >= 1 << 19);
        })
        .join()
        .unwrap();
    }
}
