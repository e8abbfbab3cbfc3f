//! How many threads one piece of work may use: the pass's [`Par`](crate::exec::Par),
//! under the name the engine's products take it by.

/// How many threads one piece of work (a matrix product) may use: the calling thread
/// alone ([`Threads::Seq`]: the caller already parallelises around it) or all of
/// rayon's ([`Threads::Rayon`]).
pub(crate) use crate::exec::Par as Threads;
