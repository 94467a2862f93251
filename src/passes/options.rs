//! A pass's options from a profile's table: deserialized by serde into [`PassSpec::Options`]
//! (`deny_unknown_fields`), an option that does not fit named by its key.

use serde::de::DeserializeOwned;

pub use crate::settings::OptionError;

#[cfg(test)]
use super::{BuildContext, PassSpec};

/// Deserializes `table` into options of type `O`, naming the key that does not fit.
pub fn parse_options<O: DeserializeOwned>(table: &toml::Table) -> std::result::Result<O, OptionError> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let message = e.into_inner().message().to_string();
        // serde names an unknown field without its place; the key is the field itself.
        let key = match (key.is_empty(), message.strip_prefix("unknown field `")) {
            (true, Some(rest)) => rest.split('`').next().unwrap_or_default().to_string(),
            _ => key,
        };
        OptionError { key, message }
    })
}

/// Builds pass `P` from options written as TOML text (for tests).
#[cfg(test)]
pub(crate) fn build_from_str<P: PassSpec>(text: &str, ctx: &BuildContext) -> crate::Result<P> {
    let table: toml::Table = text.parse().expect("valid TOML in a test");
    let options =
        parse_options::<P::Options>(&table).map_err(|e| crate::Error::bad_config(format!("[{}] {e}", P::NAME), e))?;
    P::build(options, ctx)
}
