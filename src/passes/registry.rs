//! The one list of passes: name, one-line summary and how each is built from a profile's options. Profiles
//! (`convert`), `dfast convert --help`, `dfast inspect` and the README's table all read [`PASSES`].
//!
//! Options are deserialized with serde into each pass's [`PassSpec::Options`] (`deny_unknown_fields`):
//! nothing here or in a pass reads a TOML table by hand. An option that does not fit is an [`OptionError`]
//! that names the key; the caller adds the file and the table.

pub use super::options::{OptionError, parse_options};
use super::{
    Attention, BuildContext, Cleanup, Conv1x1, FuseQkv, Int8Dynamic, Int8Static, Pass, PassSpec, PrecisionPass,
};
use crate::Result;

/// One pass as profiles name it.
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Emits ops only ONNX Runtime's CUDA EP runs ([`PassSpec::CUDA_ONLY`]).
    pub cuda_only: bool,
    /// Checks one options table on its own (a profile's `[<pass>]` or `[ep.<ep>.<pass>]`).
    check: fn(&toml::Table) -> std::result::Result<(), OptionError>,
    build: fn(&toml::Table, &BuildContext) -> Result<Box<dyn Pass>>,
}

impl PassInfo {
    const fn of<P: PassSpec>() -> Self {
        PassInfo { name: P::NAME, summary: P::SUMMARY, cuda_only: P::CUDA_ONLY, check: check::<P>, build: build::<P> }
    }

    /// Checks that `options` are options of this pass (every key known, every value of the right type).
    pub fn check(&self, options: &toml::Table) -> std::result::Result<(), OptionError> {
        (self.check)(options)
    }

    /// The pass built from `options` (checked with [`PassInfo::check`] first: a bad option is an error).
    pub fn build(&self, options: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Pass>> {
        (self.build)(options, ctx)
    }
}

/// Every pass, in the order a profile would usually run them (precision last).
pub static PASSES: &[PassInfo] = &[
    PassInfo::of::<Cleanup>(),
    PassInfo::of::<Attention>(),
    PassInfo::of::<FuseQkv>(),
    PassInfo::of::<Conv1x1>(),
    PassInfo::of::<super::UpsampleConv>(),
    PassInfo::of::<Int8Dynamic>(),
    PassInfo::of::<Int8Static>(),
    PassInfo::of::<super::Geglu>(),
    PassInfo::of::<super::BiasGelu>(),
    PassInfo::of::<super::SkipLayerNorm>(),
    PassInfo::of::<super::BiasAdd>(),
    PassInfo::of::<super::GroupNorm>(),
    PassInfo::of::<super::NhwcConv>(),
    PassInfo::of::<super::BiasEpilogue>(),
    PassInfo::of::<PrecisionPass>(),
];

/// The pass named `name`.
pub fn lookup(name: &str) -> Option<&'static PassInfo> {
    PASSES.iter().find(|p| p.name == name)
}

/// Every pass name, comma-separated (for error messages).
pub fn names() -> String {
    PASSES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

fn check<P: PassSpec>(table: &toml::Table) -> std::result::Result<(), OptionError> {
    parse_options::<P::Options>(table).map(|_| ())
}

fn build<P: PassSpec>(table: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Pass>> {
    let options =
        parse_options::<P::Options>(table).map_err(|e| crate::Error::bad_config(format!("[{}] {e}", P::NAME), e))?;
    Ok(super::boxed(P::build(options, ctx)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{ExecutionProvider, Precision};

    #[test]
    fn every_pass_is_listed_once_and_refuses_unknown_keys() {
        let mut names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PASSES.len());
        let typo: toml::Table = "no_such_option = 1".parse().unwrap();
        for pass in PASSES {
            let err = pass.check(&typo).unwrap_err();
            assert_eq!(err.key, "no_such_option", "{}: {err}", pass.name);
            assert!(pass.check(&toml::Table::new()).is_ok(), "{}: empty options must be valid", pass.name);
            assert!(!pass.summary.is_empty());
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        let table: toml::Table = "channels = [128, \"x\"]".parse().unwrap();
        let err = lookup("conv1x1").unwrap().check(&table).unwrap_err();
        assert_eq!(err.key, "channels[1]", "{err}");
        let table: toml::Table = "exclude = [[1280, 640], [320]]".parse().unwrap();
        let err = lookup("int8-dynamic").unwrap().check(&table).unwrap_err();
        assert!(err.key.starts_with("exclude"), "{err}");
        let ctx = BuildContext::new(ExecutionProvider::Cpu, Precision::Fp16);
        let err = lookup("attention").unwrap().build(&"op = 3".parse().unwrap(), &ctx).err().unwrap();
        assert!(err.to_string().starts_with("[attention] key `op`: invalid type"), "{err}");
    }
}
