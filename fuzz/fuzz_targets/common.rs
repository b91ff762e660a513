//! Shared by the fuzz targets.
#![allow(dead_code)]

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Polls a future once: the decoders read from a byte slice, which is always
/// ready, so one poll finishes them.
pub fn ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
