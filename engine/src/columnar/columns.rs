//! The open chunk of a Parquet object: converted values held column by column until they become
//! Arrow arrays.
//!
//! Scalar columns keep their values in plain vectors (strings as one byte buffer plus offsets), so
//! appending a value allocates nothing per value and the vectors become Arrow buffers without a
//! copy. Nested columns (arrays, structs, maps) keep [`Cell`] trees. Guarantees: every column can be
//! cut back to a row count ([`Columns::truncate`]), which is how a record that fails halfway leaves
//! no trace; [`Columns::take_arrays`] returns arrays of the schema's Arrow types, one per column, all
//! of the same length.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};
use arrow_array::{ArrayRef, BinaryArray, BooleanArray, ListArray, MapArray, PrimitiveArray, StringArray, StructArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, Field};

use super::schema::{ColumnType, TableSchema, map_entries_field, struct_fields};

/// One converted value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Any integer type.
    Int(i64),
    /// float or double.
    Float(f64),
    /// string, varchar, char.
    Str(String),
    /// binary.
    Bytes(Vec<u8>),
    /// decimal, unscaled.
    Decimal(i128),
    /// date: days since 1970-01-01.
    Date(i32),
    /// timestamp: microseconds since the epoch, UTC.
    Micros(i64),
    /// array.
    List(Vec<Cell>),
    /// struct, one cell per field.
    Struct(Vec<Cell>),
    /// map entries.
    Map(Vec<(Cell, Cell)>),
}

/// A converted scalar value, borrowed from the record where it can be: what a column buffer
/// stores, and the leaves of [`Cell`] trees.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Leaf<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    Decimal(i128),
    Date(i32),
    Micros(i64),
}

impl Leaf<'_> {
    /// A leaf of a cell (nested cells read as null: callers pass scalar cells).
    pub(crate) fn from_cell(cell: &Cell) -> Leaf<'_> {
        match cell {
            Cell::Bool(b) => Leaf::Bool(*b),
            Cell::Int(i) => Leaf::Int(*i),
            Cell::Float(f) => Leaf::Float(*f),
            Cell::Str(s) => Leaf::Text(Cow::Borrowed(s)),
            Cell::Bytes(b) => Leaf::Bytes(Cow::Borrowed(b)),
            Cell::Decimal(d) => Leaf::Decimal(*d),
            Cell::Date(d) => Leaf::Date(*d),
            Cell::Micros(m) => Leaf::Micros(*m),
            Cell::Null | Cell::List(_) | Cell::Struct(_) | Cell::Map(_) => Leaf::Null,
        }
    }
}

impl From<Leaf<'_>> for Cell {
    fn from(leaf: Leaf<'_>) -> Cell {
        match leaf {
            Leaf::Null => Cell::Null,
            Leaf::Bool(b) => Cell::Bool(b),
            Leaf::Int(i) => Cell::Int(i),
            Leaf::Float(f) => Cell::Float(f),
            Leaf::Text(s) => Cell::Str(s.into_owned()),
            Leaf::Bytes(b) => Cell::Bytes(b.into_owned()),
            Leaf::Decimal(d) => Cell::Decimal(d),
            Leaf::Date(d) => Cell::Date(d),
            Leaf::Micros(m) => Cell::Micros(m),
        }
    }
}

/// One column's values.
#[derive(Debug)]
enum Values {
    /// string, varchar, char, binary: the bytes of every value and where each ends.
    Bytes {
        offsets: Vec<i32>,
        bytes: Vec<u8>,
    },
    Bool(Vec<bool>),
    /// Every integer type, dates (days) and timestamps (microseconds).
    Int(Vec<i64>),
    Float(Vec<f64>),
    Decimal(Vec<i128>),
    /// array, struct, map.
    Nested(Vec<Cell>),
}

#[derive(Debug)]
struct Column {
    valid: Vec<bool>,
    values: Values,
}

/// A value too large for a column chunk (string offsets are 32-bit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a value of {0} bytes does not fit a column chunk")]
pub struct ValueTooLarge(pub usize);

impl Column {
    /// An empty column with room for `rows` values and `bytes` bytes of strings (sized like the
    /// previous chunk, so a chunk's buffers are allocated once instead of grown by doubling).
    fn with_capacity(ty: &ColumnType, rows: usize, bytes: usize) -> Self {
        let values = match ty {
            ColumnType::String | ColumnType::Varchar(_) | ColumnType::Char(_) | ColumnType::Binary => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Values::Bytes { offsets, bytes: Vec::with_capacity(bytes) }
            }
            ColumnType::Boolean => Values::Bool(Vec::with_capacity(rows)),
            ColumnType::TinyInt
            | ColumnType::SmallInt
            | ColumnType::Int
            | ColumnType::BigInt
            | ColumnType::Date
            | ColumnType::Timestamp => Values::Int(Vec::with_capacity(rows)),
            ColumnType::Float | ColumnType::Double => Values::Float(Vec::with_capacity(rows)),
            ColumnType::Decimal { .. } => Values::Decimal(Vec::with_capacity(rows)),
            ColumnType::Array(_) | ColumnType::Struct(_) | ColumnType::Map(..) => {
                Values::Nested(Vec::with_capacity(rows))
            }
        };
        Column { valid: Vec::with_capacity(rows), values }
    }

    fn new(ty: &ColumnType) -> Self {
        Column::with_capacity(ty, 0, 0)
    }

    /// Bytes of string values held.
    fn byte_len(&self) -> usize {
        match &self.values {
            Values::Bytes { bytes, .. } => bytes.len(),
            _ => 0,
        }
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    /// Appends a scalar value; a value of another kind than the column's is stored as null
    /// (the converter never produces one: it converts to the column's type first).
    fn push(&mut self, leaf: Leaf<'_>) -> Result<(), ValueTooLarge> {
        match &leaf {
            Leaf::Text(s) => return self.push_bytes(Some(s.as_bytes())),
            Leaf::Bytes(b) => return self.push_bytes(Some(b)),
            _ => {}
        }
        let valid = !matches!(leaf, Leaf::Null);
        match (&mut self.values, leaf) {
            (Values::Bytes { .. }, _) => return self.push_bytes(None),
            (Values::Bool(v), Leaf::Bool(b)) => v.push(b),
            (Values::Bool(v), _) => v.push(false),
            (Values::Int(v), Leaf::Int(i) | Leaf::Micros(i)) => v.push(i),
            (Values::Int(v), Leaf::Date(d)) => v.push(i64::from(d)),
            (Values::Int(v), _) => v.push(0),
            (Values::Float(v), Leaf::Float(f)) => v.push(f),
            (Values::Float(v), _) => v.push(0.0),
            (Values::Decimal(v), Leaf::Decimal(d)) => v.push(d),
            (Values::Decimal(v), _) => v.push(0),
            (Values::Nested(cells), leaf) => cells.push(Cell::from(leaf)),
        }
        self.valid.push(valid);
        Ok(())
    }

    /// Appends a string or binary value (`None`: null); other columns take it as null.
    fn push_bytes(&mut self, value: Option<&[u8]>) -> Result<(), ValueTooLarge> {
        let Values::Bytes { offsets, bytes } = &mut self.values else { return self.push(Leaf::Null) };
        bytes.extend_from_slice(value.unwrap_or_default());
        offsets.push(i32::try_from(bytes.len()).map_err(|_| ValueTooLarge(bytes.len()))?);
        self.valid.push(value.is_some());
        Ok(())
    }

    fn push_cell(&mut self, cell: Cell) -> Result<(), ValueTooLarge> {
        match &mut self.values {
            Values::Nested(cells) => {
                self.valid.push(!matches!(cell, Cell::Null));
                cells.push(cell);
                Ok(())
            }
            _ => self.push(Leaf::from_cell(&cell)),
        }
    }

    fn truncate(&mut self, rows: usize) {
        if rows >= self.len() {
            return;
        }
        self.valid.truncate(rows);
        match &mut self.values {
            Values::Bytes { offsets, bytes } => {
                offsets.truncate(rows + 1);
                bytes.truncate(offsets.last().map_or(0, |&end| end as usize));
            }
            Values::Bool(v) => v.truncate(rows),
            Values::Int(v) => v.truncate(rows),
            Values::Float(v) => v.truncate(rows),
            Values::Decimal(v) => v.truncate(rows),
            Values::Nested(v) => v.truncate(rows),
        }
    }

    /// The column as an Arrow array of `ty`'s type; the column is empty afterwards.
    fn take_array(&mut self, ty: &ColumnType) -> Result<ArrayRef, ArrowError> {
        // Room for a next chunk like this one, with a little slack for longer values.
        let (rows, bytes) = (self.len(), self.byte_len());
        std::mem::replace(self, Column::with_capacity(ty, rows, bytes + bytes / 8)).into_array(ty)
    }

    /// The column as an Arrow array of `ty`'s type.
    fn into_array(self, ty: &ColumnType) -> Result<ArrayRef, ArrowError> {
        let nulls = if self.valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(self.valid)) };
        Ok(match (self.values, ty) {
            (Values::Bytes { offsets, bytes }, ColumnType::Binary) => {
                Arc::new(BinaryArray::try_new(offsets_of(offsets), Buffer::from_vec(bytes), nulls)?)
            }
            (Values::Bytes { offsets, bytes }, _) => {
                Arc::new(StringArray::try_new(offsets_of(offsets), Buffer::from_vec(bytes), nulls)?)
            }
            (Values::Bool(v), _) => Arc::new(BooleanArray::new(BooleanBuffer::from(v), nulls)),
            (Values::Int(v), ColumnType::TinyInt) => narrow::<Int8Type>(&v, nulls),
            (Values::Int(v), ColumnType::SmallInt) => narrow::<Int16Type>(&v, nulls),
            (Values::Int(v), ColumnType::Int) => narrow::<Int32Type>(&v, nulls),
            (Values::Int(v), ColumnType::Date) => narrow::<Date32Type>(&v, nulls),
            (Values::Int(v), ColumnType::Timestamp) => {
                Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(v.into(), nulls).with_timezone("UTC"))
            }
            (Values::Int(v), _) => Arc::new(PrimitiveArray::<Int64Type>::new(v.into(), nulls)),
            (Values::Float(v), ColumnType::Float) => Arc::new(PrimitiveArray::<Float32Type>::new(
                v.iter().map(|f| *f as f32).collect::<ScalarBuffer<f32>>(),
                nulls,
            )),
            (Values::Float(v), _) => Arc::new(PrimitiveArray::<Float64Type>::new(v.into(), nulls)),
            (Values::Decimal(v), ColumnType::Decimal { precision, scale }) => Arc::new(
                PrimitiveArray::<Decimal128Type>::new(v.into(), nulls).with_precision_and_scale(*precision, *scale)?,
            ),
            (Values::Decimal(_), _) => {
                return Err(ArrowError::SchemaError("decimal values for a non-decimal column".into()));
            }
            (Values::Nested(cells), ty) => build_array(ty, &cells.iter().collect::<Vec<_>>())?,
        })
    }
}

fn offsets_of(offsets: Vec<i32>) -> OffsetBuffer<i32> {
    // Offsets start at 0 and never decrease: `push` only appends to the byte buffer.
    OffsetBuffer::new(ScalarBuffer::from(offsets))
}

/// An integer column of a narrower type; every value was range-checked when converted.
fn narrow<T>(values: &[i64], nulls: Option<NullBuffer>) -> ArrayRef
where
    T: arrow_array::types::ArrowPrimitiveType,
    T::Native: TryFrom<i64> + Default,
{
    let narrowed: ScalarBuffer<T::Native> =
        values.iter().map(|v| T::Native::try_from(*v).unwrap_or_default()).collect();
    Arc::new(PrimitiveArray::<T>::new(narrowed, nulls))
}

/// The converted rows of the open chunk of one object.
#[derive(Debug)]
pub struct Columns {
    schema: Arc<TableSchema>,
    columns: Vec<Column>,
    rows: usize,
}

impl Columns {
    /// Empty columns for `schema`.
    pub fn new(schema: Arc<TableSchema>) -> Self {
        let columns = schema.columns.iter().map(|c| Column::new(&c.ty)).collect();
        Columns { schema, columns, rows: 0 }
    }

    /// Complete rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of string and binary values held (chunks are cut before offsets could overflow); a sum
    /// over the columns, so ask every few rows, not every record.
    pub fn text_bytes(&self) -> usize {
        self.columns.iter().map(Column::byte_len).sum()
    }

    /// Whether column `index` already has a value in the row being built.
    pub(crate) fn has_value(&self, index: usize) -> bool {
        self.columns.get(index).is_some_and(|c| c.len() > self.rows)
    }

    /// Sets column `index` of the row being built (replacing a value given earlier in the row).
    pub(crate) fn set(&mut self, index: usize, leaf: Leaf<'_>) -> Result<(), ValueTooLarge> {
        let rows = self.rows;
        let Some(column) = self.columns.get_mut(index) else { return Ok(()) };
        column.truncate(rows);
        column.push(leaf)
    }

    /// Sets string column `index` of the row being built to `text`: [`Self::set`] with
    /// [`Leaf::Text`], for the most common value without building one.
    pub(crate) fn set_text(&mut self, index: usize, text: &str) -> Result<(), ValueTooLarge> {
        let rows = self.rows;
        let Some(column) = self.columns.get_mut(index) else { return Ok(()) };
        column.truncate(rows);
        column.push_bytes(Some(text.as_bytes()))
    }

    /// Sets nested column `index` of the row being built.
    pub(crate) fn set_cell(&mut self, index: usize, cell: Cell) -> Result<(), ValueTooLarge> {
        let rows = self.rows;
        let Some(column) = self.columns.get_mut(index) else { return Ok(()) };
        column.truncate(rows);
        column.push_cell(cell)
    }

    /// Ends the row being built: columns without a value get null.
    pub(crate) fn end_row(&mut self) -> Result<(), ValueTooLarge> {
        for column in &mut self.columns {
            if column.len() == self.rows {
                column.push(Leaf::Null)?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Cuts every column back to `rows` complete rows (dropping a partly built row too).
    pub fn truncate(&mut self, rows: usize) {
        self.rows = self.rows.min(rows);
        for column in &mut self.columns {
            column.truncate(self.rows);
        }
    }

    /// The held rows as Arrow arrays (one per column, in schema order); the columns are empty after.
    pub fn take_arrays(&mut self) -> Result<Vec<ArrayRef>, ArrowError> {
        self.truncate(self.rows);
        let schema = Arc::clone(&self.schema);
        let arrays = self
            .columns
            .iter_mut()
            .zip(&schema.columns)
            .map(|(column, spec)| column.take_array(&spec.ty))
            .collect::<Result<Vec<_>, _>>()?;
        self.rows = 0;
        Ok(arrays)
    }

    /// Row `row` as cells (for tests and diagnostics; the writer never needs it).
    pub fn row(&self, row: usize) -> Vec<Cell> {
        self.columns
            .iter()
            .zip(&self.schema.columns)
            .map(|(column, spec)| {
                if !column.valid.get(row).copied().unwrap_or(false) {
                    return Cell::Null;
                }
                match &column.values {
                    Values::Bytes { offsets, bytes } => {
                        let value = &bytes[offsets[row] as usize..offsets[row + 1] as usize];
                        match spec.ty {
                            ColumnType::Binary => Cell::Bytes(value.to_vec()),
                            _ => Cell::Str(String::from_utf8_lossy(value).into_owned()),
                        }
                    }
                    Values::Bool(v) => Cell::Bool(v[row]),
                    Values::Int(v) => match spec.ty {
                        ColumnType::Timestamp => Cell::Micros(v[row]),
                        ColumnType::Date => Cell::Date(v[row] as i32),
                        _ => Cell::Int(v[row]),
                    },
                    Values::Float(v) => Cell::Float(v[row]),
                    Values::Decimal(v) => Cell::Decimal(v[row]),
                    Values::Nested(v) => v[row].clone(),
                }
            })
            .collect()
    }
}

static NULL: Cell = Cell::Null;

fn validity(cells: &[&Cell]) -> Option<NullBuffer> {
    let valid: Vec<bool> = cells.iter().map(|c| !matches!(c, Cell::Null)).collect();
    if valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(valid)) }
}

/// Builds a nested column's Arrow array from its cells, recursively (scalar children go through a
/// [`Column`], so scalar values have one conversion to Arrow wherever they sit).
fn build_array(ty: &ColumnType, cells: &[&Cell]) -> Result<ArrayRef, ArrowError> {
    Ok(match ty {
        ColumnType::Array(inner) => {
            let mut lengths = Vec::with_capacity(cells.len());
            let mut children: Vec<&Cell> = Vec::new();
            for c in cells {
                if let Cell::List(items) = c {
                    children.extend(items.iter());
                    lengths.push(items.len());
                } else {
                    lengths.push(0);
                }
            }
            let values = build_array(inner, &children)?;
            let field = Arc::new(Field::new("element", inner.arrow_type(), true));
            Arc::new(ListArray::try_new(field, OffsetBuffer::from_lengths(lengths), values, validity(cells))?)
        }
        ColumnType::Struct(fields) => {
            let mut children = Vec::with_capacity(fields.len());
            for (i, (_, field_ty)) in fields.iter().enumerate() {
                let field_cells: Vec<&Cell> = cells
                    .iter()
                    .map(|c| if let Cell::Struct(v) = c { v.get(i).unwrap_or(&NULL) } else { &NULL })
                    .collect();
                children.push(build_array(field_ty, &field_cells)?);
            }
            Arc::new(StructArray::try_new(struct_fields(fields), children, validity(cells))?)
        }
        ColumnType::Map(key_ty, value_ty) => {
            let mut lengths = Vec::with_capacity(cells.len());
            let (mut keys, mut values): (Vec<&Cell>, Vec<&Cell>) = (Vec::new(), Vec::new());
            for c in cells {
                if let Cell::Map(entries) = c {
                    for (k, v) in entries {
                        keys.push(k);
                        values.push(v);
                    }
                    lengths.push(entries.len());
                } else {
                    lengths.push(0);
                }
            }
            let entries_field = map_entries_field(key_ty, value_ty);
            let arrow_schema::DataType::Struct(entry_fields) = entries_field.data_type().clone() else {
                return Err(ArrowError::SchemaError("map entries are not a struct".into()));
            };
            let entries = StructArray::try_new(
                entry_fields,
                vec![build_array(key_ty, &keys)?, build_array(value_ty, &values)?],
                None,
            )?;
            Arc::new(MapArray::try_new(
                entries_field,
                OffsetBuffer::from_lengths(lengths),
                entries,
                validity(cells),
                false,
            )?)
        }
        scalar => {
            let mut column = Column::with_capacity(scalar, cells.len(), 0);
            for cell in cells {
                column.push(Leaf::from_cell(cell)).map_err(|e| ArrowError::ComputeError(e.to_string()))?;
            }
            column.into_array(scalar)?
        }
    })
}
