//! The Python values a torch.save file holds, as a Rust tree.

use tch::Tensor;

/// A value from (or for) a torch.save file: the subset of Python that bergson and Hugging Face
/// checkpoints use. Dicts keep their insertion order, as Python's do.
#[derive(Debug)]
pub enum Value {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (64-bit, as libtorch reads them).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `list`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `dict`, in insertion order. Keys are str, int, float or bool.
    Dict(Vec<(Value, Value)>),
    /// `torch.Tensor`; loaded tensors are on the CPU.
    Tensor(Tensor),
}

impl Value {
    /// The Python name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "Tensor",
        }
    }

    /// A dict with string keys, in the given order.
    pub fn str_dict<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
        )
    }

    /// The value under string key `key`, if this is a dict that has one.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value under int key `key` (e.g. an optimizer's `state[0]`), if this is a dict that
    /// has one.
    pub fn get_int_key(&self, key: i64) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| matches!(k, Value::Int(i) if *i == key))
            .map(|(_, v)| v)
    }

    /// Removes and returns the value under string key `key`, if this is a dict that has one.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let Value::Dict(entries) = self else {
            return None;
        };
        let i = entries.iter().position(|(k, _)| k.as_str() == Some(key))?;
        Some(entries.remove(i).1)
    }

    /// The (key, value) pairs of a dict.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items of a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The items of a tuple.
    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The items of a list or a tuple (Python code often accepts either).
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) | Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The tensor, taken out of the value.
    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The int, if this is one (bools are not ints here).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as f64, if this is a float or an int (Python mixes them, e.g. `lr=1`).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `None`.
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}

impl From<Vec<Value>> for Value {
    /// A list.
    fn from(items: Vec<Value>) -> Self {
        Value::List(items)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    /// `None` for `None`.
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::Value;

    #[test]
    fn lookups() {
        let mut state = Value::Dict(vec![
            (
                Value::Int(3),
                Value::str_dict([("step", Value::Float(2.0))]),
            ),
            (Value::from("lr"), Value::Int(1)),
        ]);
        assert_eq!(
            state
                .get_int_key(3)
                .and_then(|s| s.get("step"))
                .and_then(Value::as_float),
            Some(2.0)
        );
        assert!(state.get_int_key(4).is_none());
        assert_eq!(state.get("lr").and_then(Value::as_float), Some(1.0));
        assert!(state.get("3").is_none());
        assert_eq!(state.remove("lr").and_then(|v| v.as_int()), Some(1));
        assert!(state.get("lr").is_none());
        assert_eq!(state.as_dict().map(<[_]>::len), Some(1));
        assert_eq!(Value::Bool(true).as_int(), None);
        assert_eq!(
            Value::Tuple(vec![Value::None]).as_seq().map(<[_]>::len),
            Some(1)
        );
        assert!(Value::from(None::<i64>).is_none());
    }
}
