//! The command line's parser for the library's named choices ([`Choice`]): the possible values
//! listed in `--help` and in errors come from the library's one list of names.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use robust_ssl::choice::Choice;

/// Parses a value of `T` by its name.
pub fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::names()).map(|name| T::parse(&name).expect("a listed name"))
}
