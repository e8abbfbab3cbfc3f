//! What the layers run on besides arithmetic: the per-thread activation pool and
//! working memory, the threads a layer may use, and the per-channel maps that travel
//! with activations.
//! Imports nothing else of [`crate::nn`].

mod channel_map;
mod pool_alloc;
mod scratch;
mod threads;

pub(crate) use channel_map::{affine_in_place, affine_into, relu, ChannelMap};
pub(crate) use pool_alloc::{overwritten, recycle};
pub(crate) use scratch::{with_scratch, Line, Scratch};
pub(crate) use threads::{product_threads, serially, threads, Threads};
