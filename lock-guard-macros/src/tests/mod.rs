//! Unit tests of each stage of the translation. They live here, not next to the code, because
//! `translate/` is also compiled into the expansion-snapshot test, which should not run them twice.

mod attr;
mod expand;
mod item;
mod validate;
