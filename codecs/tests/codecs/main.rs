//! Integration tests of voxroute-codecs: the crate's single test binary, one module per area.
//! Fixtures live in `codecs/tests/fixtures/`, one folder per module, each with its README.

mod alloc;
mod chain;
mod fixture;
mod g711;
mod opus;
mod resample;
