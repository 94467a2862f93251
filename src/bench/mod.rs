//! `dfast bench` and `dfast report`: the seed's benchmark, per profile, precision and execution provider.

pub mod lock;
pub mod report;
pub mod run;
pub mod schema;
pub mod unet_step;

pub use schema::{COLUMNS, RESULTS_CSV, Row};
