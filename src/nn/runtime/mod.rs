//! What the layers run on besides arithmetic: the per-thread activation pool and
//! working memory, the threads a layer may use, and the per-channel maps that travel
//! with activations.
//! Imports nothing else of [`crate::nn`].

mod activation;
mod channel_map;
mod pool_alloc;
mod scratch;
pub(crate) mod team;
mod threads;

pub(crate) use activation::relu;
pub use activation::Activation;
pub(crate) use channel_map::ChannelMap;
pub(crate) use pool_alloc::{buffer, overwritten, recycle, recycle_buffer};
pub(crate) use scratch::{with_scratch, Line, Scratch};
pub(crate) use threads::Threads;
