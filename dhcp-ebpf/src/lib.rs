//! Empty library target: lets dhcp-user declare a build-dependency on this crate so cargo
//! rebuilds it when the XDP program changes. The program itself is `main.rs`.
#![no_std]
