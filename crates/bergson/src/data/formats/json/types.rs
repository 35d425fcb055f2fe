//! Column types inferred as pyarrow's JSON reader infers them: ints -> int64, any float ->
//! float64, strings -> string, bools -> bool, lists -> list, objects -> struct, fields only
//! ever null -> null; struct fields in first-seen order.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields};
use serde_json::{Map, Value};

use super::specials::Specials;

/// An inferred JSON type; `Null` widens to anything, `Int` widens to `Float`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ty {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<Ty>),
    Struct(Vec<(String, Ty)>),
}

/// Two different types met in one field (`path` from the row down).
#[derive(Debug)]
pub(super) struct Conflict {
    pub path: Vec<String>,
    pub a: &'static str,
    pub b: &'static str,
}

impl Conflict {
    fn inside(mut self, key: &str) -> Conflict {
        self.path.insert(0, key.to_string());
        self
    }

    /// The field as users write it: `a.b[]`.
    pub fn field(&self) -> String {
        self.path.join(".").replace(".[]", "[]")
    }
}

impl Ty {
    /// The type of one value.
    pub fn of(value: &Value, specials: &Specials) -> Result<Ty, Conflict> {
        Ok(match value {
            Value::Null => Ty::Null,
            Value::String(s) if specials.value(s).is_some() => Ty::Float,
            Value::Bool(_) => Ty::Bool,
            // Integers beyond int64 fall back to float64 rather than failing.
            Value::Number(n) if n.is_i64() => Ty::Int,
            Value::Number(_) => Ty::Float,
            Value::String(_) => Ty::Str,
            Value::Array(items) => {
                let mut ty = Ty::Null;
                for item in items {
                    ty = ty
                        .merge(Ty::of(item, specials)?)
                        .map_err(|c| c.inside("[]"))?;
                }
                Ty::List(Box::new(ty))
            }
            Value::Object(map) => Ty::of_fields(map, specials)?,
        })
    }

    /// The struct type of an object's fields.
    pub fn of_fields(map: &Map<String, Value>, specials: &Specials) -> Result<Ty, Conflict> {
        Ok(Ty::Struct(
            map.iter()
                .map(|(k, v)| {
                    Ty::of(v, specials)
                        .map(|t| (k.clone(), t))
                        .map_err(|c| c.inside(k))
                })
                .collect::<Result<_, _>>()?,
        ))
    }

    /// The common type of two values of one field, or the conflict.
    pub fn merge(self, other: Ty) -> Result<Ty, Conflict> {
        Ok(match (self, other) {
            (Ty::Null, t) | (t, Ty::Null) => t,
            (Ty::Int, Ty::Float) | (Ty::Float, Ty::Int) => Ty::Float,
            (Ty::List(a), Ty::List(b)) => {
                Ty::List(Box::new(a.merge(*b).map_err(|c| c.inside("[]"))?))
            }
            (Ty::Struct(mut a), Ty::Struct(b)) => {
                for (name, ty) in b {
                    match a.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, existing)) => {
                            let merged = std::mem::replace(existing, Ty::Null)
                                .merge(ty)
                                .map_err(|c| c.inside(&name))?;
                            *existing = merged;
                        }
                        None => a.push((name, ty)),
                    }
                }
                Ty::Struct(a)
            }
            (a, b) if a == b => a,
            (a, b) => {
                return Err(Conflict {
                    path: Vec::new(),
                    a: a.name(),
                    b: b.name(),
                })
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Str => "string",
            Ty::List(_) => "list",
            Ty::Struct(_) => "object",
        }
    }

    /// The Arrow type.
    pub fn arrow(&self) -> DataType {
        match self {
            Ty::Null => DataType::Null,
            Ty::Bool => DataType::Boolean,
            Ty::Int => DataType::Int64,
            Ty::Float => DataType::Float64,
            Ty::Str => DataType::Utf8,
            Ty::List(item) => DataType::List(Arc::new(Field::new("item", item.arrow(), true))),
            Ty::Struct(fields) => DataType::Struct(struct_fields(fields)),
        }
    }
}

/// Arrow fields (all nullable) of named types.
pub(super) fn struct_fields(fields: &[(String, Ty)]) -> Fields {
    fields
        .iter()
        .map(|(name, ty)| Field::new(name, ty.arrow(), true))
        .collect()
}
