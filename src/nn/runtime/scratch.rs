//! The per-thread working memory of the convolution paths and kernels, in one place:
//! grown as needed, reused across calls, never given back.

use std::cell::RefCell;

/// Sixteen floats on a cache line of their own: vectors stored and loaded through it
/// never straddle two lines.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [f32; 16]);

/// A zero-padded copy of an image and the layout it was laid out for: while the
/// layout stays the same, everything outside the copied interior is still zero, and a
/// new image only rewrites the interior.
#[derive(Debug, Default)]
pub(crate) struct Padded {
    data: Vec<f32>,
    layout: [usize; 6],
}

impl Padded {
    /// The buffer of `len` floats for `layout`: zeros when the layout changed,
    /// otherwise as the previous image of that layout left it.
    pub(crate) fn for_layout(&mut self, layout: [usize; 6], len: usize) -> &mut [f32] {
        if self.layout != layout || self.data.len() != len {
            self.data.clear();
            self.data.resize(len, 0.0);
            self.layout = layout;
        }
        &mut self.data
    }
}

/// The working memory of one thread.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// im2col columns.
    pub columns: Vec<f32>,
    /// The product of several images side by side, before it is scattered to them.
    pub product: Vec<f32>,
    /// The zero-padded input of the direct kernel.
    pub padded: Padded,
    /// The shifted, zero-padded input copies of the shifted products.
    pub shifted: Padded,
    /// An input image mapped by a pending batch norm (Winograd).
    pub mapped: Vec<f32>,
    /// Winograd's transformed input, products and output pixels of a block.
    pub lines: [Vec<Line>; 3],
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's working memory. Whoever holds it calls nothing that
/// asks for it again (a nested call would panic).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with_borrow_mut(f)
}
