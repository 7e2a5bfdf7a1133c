//! Empty library target: lets the tests crate declare a build-dependency on this crate so
//! cargo rebuilds it when the generator changes. The programs are in `main.rs`.
#![no_std]
