//! `--set PATH=VALUE` on an experiment file, applied to its text before it is parsed: PATH is
//! dotted keys through its tables (`run.size`), where an array of tables or an array takes an
//! index (`attack.0.eps`: the first `[[attack]]`); VALUE is a TOML value (`518`, `["4/255"]`,
//! `"study"`), a bare word standing for a string (`study`, `4/255`). A missing key is added
//! (missing tables too), so that a misspelt one is refused by the parser like one in the file.
//! The edited text is what is checked, planned and recorded in the run folder; each value set in
//! a plain table carries a `# --set` comment there.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use toml_edit::{DocumentMut, InlineTable, Item, Value};

/// `text` (the experiment file at `file`) with every `PATH=VALUE` of `sets` applied in order.
pub fn apply(text: &str, file: &Path, sets: &[String]) -> Result<String> {
    if sets.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
    for set in sets {
        set_one(&mut doc, set).with_context(|| format!("--set {set} (on {})", file.display()))?;
    }
    Ok(doc.to_string())
}

/// The value of a `--set`: TOML, or a bare word as a string.
fn parse_value(text: &str) -> Result<Value> {
    match text.trim().parse::<Value>() {
        Ok(v) => Ok(v),
        Err(e) => {
            let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:+".contains(c));
            if bare {
                Ok(Value::from(text))
            } else {
                bail!("'{text}' is not a TOML value ({})", e.to_string().trim_end().replace('\n', " "))
            }
        }
    }
}

fn set_one(doc: &mut DocumentMut, set: &str) -> Result<()> {
    let (path, value) = set.split_once('=').ok_or_else(|| anyhow!("expected PATH=VALUE, e.g. run.size=518"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.trim().is_empty()) {
        bail!("'{path}' is not a dotted path of keys (e.g. attack.0.eps)");
    }
    let mut value = parse_value(value)?;
    let mut item = doc.as_item_mut();
    let mut walked = String::new();
    for (i, key) in keys.iter().map(|k| k.trim()).enumerate() {
        let last = i + 1 == keys.len();
        let here = if walked.is_empty() { "the file".to_string() } else { format!("'{walked}'") };
        if let Some(n) = array_len(item) {
            let index: usize = key.parse().map_err(|_| anyhow!("{here} is an array: '{key}' must be an index below {n}"))?;
            if index >= n {
                bail!("{here} has {n} entries: no index {index}");
            }
            if last {
                let slot = item.get_mut(index).expect("index checked");
                keep_decor(slot, &mut value);
                *slot = Item::Value(value);
                return Ok(());
            }
            item = item.get_mut(index).expect("index checked");
        } else {
            let inline = item.is_inline_table();
            let plain = item.is_table();
            let holds = type_of(item);
            let table =
                item.as_table_like_mut().ok_or_else(|| anyhow!("{here} is not a table (it holds {holds}): no key '{key}' in it"))?;
            if last {
                if plain {
                    value.decor_mut().set_suffix(" # --set");
                }
                if let Some(old) = table.get_mut(key) {
                    if !plain {
                        keep_decor(old, &mut value);
                    }
                    *old = Item::Value(value);
                } else {
                    table.insert(key, Item::Value(value));
                }
                return Ok(());
            }
            if table.get(key).is_none() {
                let fresh = if inline { Item::Value(Value::InlineTable(InlineTable::new())) } else { toml_edit::table() };
                table.insert(key, fresh);
            }
            item = table.get_mut(key).expect("inserted");
        }
        walked = if walked.is_empty() { key.to_string() } else { format!("{walked}.{key}") };
    }
    unreachable!("the loop returns at the last key")
}

/// Entries of an array of tables or an array value; `None` for anything else.
fn array_len(item: &Item) -> Option<usize> {
    item.as_array_of_tables().map(|a| a.len()).or_else(|| item.as_array().map(|a| a.len()))
}

/// A replaced value inside an array or inline table keeps the old one's spacing.
fn keep_decor(old: &Item, new: &mut Value) {
    if let Some(v) = old.as_value() {
        *new.decor_mut() = v.decor().clone();
    }
}

fn type_of(item: &Item) -> &'static str {
    match item.as_value() {
        Some(v) => v.type_name(),
        None => item.type_name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
[run]
attack_batch_size = 8 # images per batch

[[encoder]]
checkpoint = \"a.pth\"

[[task]]
name = \"seg\"
heads = [{ epochs = 4 }]

[[attack]]
kind = \"embed\"
eps = [\"8/255\"]

[[attack]]
kind = \"task\"
";

    fn set(sets: &[&str]) -> Result<String> {
        apply(FILE, Path::new("exp.toml"), &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn parsed(sets: &[&str]) -> toml::Table {
        toml::from_str(&set(sets).unwrap()).unwrap()
    }

    #[test]
    fn paths_reach_tables_arrays_of_tables_and_arrays() {
        let t = parsed(&["run.size=518", "attack.0.eps=[\"4/255\", \"2/255\"]", "attack.1.norm=L2", "task.0.heads.0.epochs=5"]);
        assert_eq!(t["run"]["size"].as_integer(), Some(518));
        assert_eq!(t["run"]["attack_batch_size"].as_integer(), Some(8), "the other keys stay");
        let eps: Vec<&str> = t["attack"][0]["eps"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(eps, ["4/255", "2/255"]);
        assert_eq!(t["attack"][1]["norm"].as_str(), Some("L2"), "a bare word is a string");
        assert_eq!(t["task"][0]["heads"][0]["epochs"].as_integer(), Some(5));
        assert_eq!(parsed(&["attack.0.eps.0=1/255"])["attack"][0]["eps"][0].as_str(), Some("1/255"));
        // Later wins; a replaced key keeps its place and the file's other lines stay as written.
        let text = set(&["run.attack_batch_size=4", "run.attack_batch_size=16"]).unwrap();
        assert!(text.starts_with("[run]\nattack_batch_size = 16 # --set\n"), "{text}");
        assert!(text.contains("[[task]]\nname = \"seg\"\nheads = [{ epochs = 4 }]\n"), "{text}");
        // A missing table is made.
        let t: toml::Table =
            toml::from_str(&apply("[[encoder]]\ncheckpoint = \"a\"\n", Path::new("e.toml"), &["run.size=224".into()]).unwrap()).unwrap();
        assert_eq!(t["run"]["size"].as_integer(), Some(224));
    }

    #[test]
    fn bad_paths_and_values_name_the_override() {
        let err = |sets: &[&str]| format!("{:#}", set(sets).unwrap_err());
        let e = err(&["attack.5.eps=1"]);
        assert!(e.contains("--set attack.5.eps=1") && e.contains("exp.toml") && e.contains("'attack' has 2 entries"), "{e}");
        let e = err(&["attack.first.eps=1"]);
        assert!(e.contains("'attack' is an array") && e.contains("'first'"), "{e}");
        let e = err(&["run.attack_batch_size.x=1"]);
        assert!(e.contains("'run.attack_batch_size' is not a table (it holds integer)"), "{e}");
        let e = err(&["run.size"]);
        assert!(e.contains("PATH=VALUE"), "{e}");
        let e = err(&["run.size=[1,"]);
        assert!(e.contains("not a TOML value"), "{e}");
        let e = err(&["run..size=1"]);
        assert!(e.contains("dotted path"), "{e}");
    }
}
