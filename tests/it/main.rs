mod blobs;
mod support;
