//! Arrow arrays filled row by row from parsed JSON values, one builder per inferred column
//! (missing and `null` values are nulls).

use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListArray, NullArray,
    StringBuilder, StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{Field, Fields};
use serde_json::Value;

use super::specials::Specials;
use super::types::{struct_fields, Ty};

/// Collects the values of one column of an inferred type.
pub(super) enum ColumnBuilder {
    Null(usize),
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    List {
        item_type: Arc<Field>,
        offsets: Vec<i32>,
        valid: NullBufferBuilder,
        items: Box<ColumnBuilder>,
    },
    Struct {
        fields: Fields,
        children: Vec<(String, ColumnBuilder)>,
        valid: NullBufferBuilder,
        len: usize,
    },
}

impl ColumnBuilder {
    /// An empty column of type `ty`.
    pub fn new(ty: &Ty) -> ColumnBuilder {
        match ty {
            Ty::Null => ColumnBuilder::Null(0),
            Ty::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
            Ty::Int => ColumnBuilder::Int(Int64Builder::new()),
            Ty::Float => ColumnBuilder::Float(Float64Builder::new()),
            Ty::Str => ColumnBuilder::Str(StringBuilder::new()),
            Ty::List(item) => ColumnBuilder::List {
                item_type: Arc::new(Field::new("item", item.arrow(), true)),
                offsets: vec![0],
                valid: NullBufferBuilder::new(0),
                items: Box::new(ColumnBuilder::new(item)),
            },
            Ty::Struct(fields) => ColumnBuilder::Struct {
                fields: struct_fields(fields),
                children: fields
                    .iter()
                    .map(|(name, ty)| (name.clone(), ColumnBuilder::new(ty)))
                    .collect(),
                valid: NullBufferBuilder::new(0),
                len: 0,
            },
        }
    }

    /// Appends one value (`None` when the field is missing).
    pub fn append(&mut self, value: Option<&Value>, specials: &Specials) {
        let value = value.filter(|v| !v.is_null());
        match self {
            ColumnBuilder::Null(n) => *n += 1,
            ColumnBuilder::Bool(b) => b.append_option(value.and_then(Value::as_bool)),
            ColumnBuilder::Int(b) => b.append_option(value.and_then(Value::as_i64)),
            ColumnBuilder::Float(b) => b.append_option(value.and_then(|v| match v {
                Value::String(s) => specials.value(s),
                other => other.as_f64(),
            })),
            ColumnBuilder::Str(b) => b.append_option(value.and_then(Value::as_str)),
            ColumnBuilder::List {
                offsets,
                valid,
                items,
                ..
            } => {
                let list = value.and_then(Value::as_array);
                for item in list.into_iter().flatten() {
                    items.append(Some(item), specials);
                }
                valid.append(list.is_some());
                // Offsets are i32 as in the list type pyarrow infers.
                offsets.push(items.len() as i32);
            }
            ColumnBuilder::Struct {
                children,
                valid,
                len,
                ..
            } => {
                let object = value.and_then(Value::as_object);
                for (name, child) in children {
                    child.append(object.and_then(|o| o.get(name.as_str())), specials);
                }
                valid.append(object.is_some());
                *len += 1;
            }
        }
    }

    /// Values appended so far.
    fn len(&self) -> usize {
        match self {
            ColumnBuilder::Null(n) => *n,
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int(b) => b.len(),
            ColumnBuilder::Float(b) => b.len(),
            ColumnBuilder::Str(b) => b.len(),
            ColumnBuilder::List { offsets, .. } => offsets.len() - 1,
            ColumnBuilder::Struct { len, .. } => *len,
        }
    }

    /// The finished array.
    pub fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Null(n) => Arc::new(NullArray::new(n)),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Str(mut b) => Arc::new(b.finish()),
            ColumnBuilder::List {
                item_type,
                offsets,
                mut valid,
                items,
            } => Arc::new(ListArray::new(
                item_type,
                OffsetBuffer::new(offsets.into()),
                items.finish(),
                valid.finish(),
            )),
            ColumnBuilder::Struct {
                fields,
                children,
                mut valid,
                len,
            } => {
                if children.is_empty() {
                    return Arc::new(StructArray::new_empty_fields(len, valid.finish()));
                }
                let arrays = children.into_iter().map(|(_, c)| c.finish()).collect();
                Arc::new(StructArray::new(fields, arrays, valid.finish()))
            }
        }
    }
}
