//! Reusing the memory of intermediate activations.
//!
//! A forward pass allocates one tensor per layer and drops it one layer later. Large
//! allocations go back to the operating system when freed, so each new one costs page
//! faults (at batch 256, more time than zeroing the memory). Composite layers hand
//! the tensors they no longer need to [`recycle`]; [`overwritten`] takes memory from
//! this thread's few recycled buffers before asking the allocator.

use super::Tensor4;
use ndarray::Array4;
use std::cell::RefCell;

/// Recycled buffers kept per thread.
const KEPT: usize = 2;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// An NCHW tensor for a layer that writes every element: in recycled memory, with the
/// values a previous tensor left there, when a large enough buffer is free; zeros
/// otherwise. Skipping the zero fill saves a pass over the output.
pub(crate) fn overwritten(shape: (usize, usize, usize, usize)) -> Tensor4 {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    let recycled = BUFFERS.with_borrow_mut(|buffers| {
        // The smallest buffer that fits.
        let best = buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        Some(buffers.swap_remove(best))
    });
    let data = match recycled {
        Some(mut data) => {
            // Zeros only where the buffer was shorter than `len`.
            data.resize(len, 0.0);
            data
        }
        None => vec![0.0; len],
    };
    Array4::from_shape_vec(shape, data).expect("len matches the shape")
}

/// Gives `tensor`'s memory back for reuse by [`zeros`] on this thread.
pub(crate) fn recycle(tensor: Tensor4) {
    let (data, _) = tensor.into_raw_vec_and_offset();
    BUFFERS.with_borrow_mut(|buffers| {
        if buffers.len() < KEPT {
            buffers.push(data);
        } else if let Some(smallest) = buffers.iter_mut().min_by_key(|b| b.capacity()) {
            if smallest.capacity() < data.capacity() {
                *smallest = data;
            }
        }
    });
}
