//! Shared test support: the app, a private S3 server, cuttable proxies.

pub mod app;
pub mod proxy;
pub mod s3;

#[allow(unused_imports)]
pub use app::{
    Options, TestApp, generate_body, poll_until, sample_document, spawn_app, spawn_app_with,
};
