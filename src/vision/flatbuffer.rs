//! A bounds-checked reader for the FlatBuffers binary format, enough to walk a
//! TensorFlow Lite model: tables with vtables, scalars, strings, vectors of scalars and
//! vectors of tables. Every offset is checked against the buffer, so a truncated or
//! corrupt file gives an error instead of a panic.

/// A FlatBuffers structure error: the message names the offset or field that is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FormatError(pub String);

pub(crate) type Result<T> = std::result::Result<T, FormatError>;

fn read_array<const N: usize>(buf: &[u8], pos: usize) -> Result<[u8; N]> {
    pos.checked_add(N)
        .and_then(|end| buf.get(pos..end))
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            FormatError(format!(
                "offset {pos} + {N} is past the end of the {}-byte buffer",
                buf.len()
            ))
        })
}

fn read_u16(buf: &[u8], pos: usize) -> Result<u16> {
    read_array::<2>(buf, pos).map(u16::from_le_bytes)
}

fn read_u32(buf: &[u8], pos: usize) -> Result<u32> {
    read_array::<4>(buf, pos).map(u32::from_le_bytes)
}

/// Follows the unsigned 32-bit offset stored at `pos` (offsets are relative to their own
/// position in FlatBuffers).
fn follow(buf: &[u8], pos: usize) -> Result<usize> {
    let offset = read_u32(buf, pos)? as usize;
    pos.checked_add(offset)
        .filter(|&target| target < buf.len())
        .ok_or_else(|| FormatError(format!("offset {offset} at {pos} points past the buffer")))
}

/// One table: its position and its vtable's field slots.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Table<'a> {
    /// Opens the root table of a finished buffer.
    pub(crate) fn root(buf: &'a [u8]) -> Result<Self> {
        let pos = follow(buf, 0)?;
        Self::at(buf, pos)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Self> {
        let soffset = i32::from_le_bytes(read_array::<4>(buf, pos)?) as i64;
        let vtable = usize::try_from(pos as i64 - soffset).map_err(|_| {
            FormatError(format!("vtable of the table at {pos} is before the buffer"))
        })?;
        let vtable_len = read_u16(buf, vtable)? as usize;
        if vtable_len < 4 || vtable + vtable_len > buf.len() {
            return Err(FormatError(format!(
                "vtable at {vtable} has invalid length {vtable_len}"
            )));
        }
        Ok(Self {
            buf,
            pos,
            vtable,
            vtable_len,
        })
    }

    /// Returns the absolute position of field `slot`, or `None` when the field is absent.
    fn field(&self, slot: usize) -> Result<Option<usize>> {
        let entry = 4 + 2 * slot;
        if entry + 2 > self.vtable_len {
            return Ok(None);
        }
        let offset = read_u16(self.buf, self.vtable + entry)? as usize;
        Ok((offset != 0).then_some(self.pos + offset))
    }

    fn scalar<const N: usize>(&self, slot: usize) -> Result<Option<[u8; N]>> {
        match self.field(slot)? {
            Some(pos) => read_array::<N>(self.buf, pos).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn i8(&self, slot: usize, default: i8) -> Result<i8> {
        Ok(self.scalar::<1>(slot)?.map_or(default, i8::from_le_bytes))
    }

    pub(crate) fn i32(&self, slot: usize, default: i32) -> Result<i32> {
        Ok(self.scalar::<4>(slot)?.map_or(default, i32::from_le_bytes))
    }

    pub(crate) fn u32(&self, slot: usize, default: u32) -> Result<u32> {
        Ok(self.scalar::<4>(slot)?.map_or(default, u32::from_le_bytes))
    }

    pub(crate) fn u64(&self, slot: usize, default: u64) -> Result<u64> {
        Ok(self.scalar::<8>(slot)?.map_or(default, u64::from_le_bytes))
    }

    pub(crate) fn f32(&self, slot: usize, default: f32) -> Result<f32> {
        Ok(self.scalar::<4>(slot)?.map_or(default, f32::from_le_bytes))
    }

    /// Reads a sub-table (also the value of a union field).
    pub(crate) fn table(&self, slot: usize) -> Result<Option<Table<'a>>> {
        match self.field(slot)? {
            Some(pos) => Table::at(self.buf, follow(self.buf, pos)?).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn vector(&self, slot: usize) -> Result<Option<Vector<'a>>> {
        let Some(pos) = self.field(slot)? else {
            return Ok(None);
        };
        let start = follow(self.buf, pos)?;
        let len = read_u32(self.buf, start)? as usize;
        Ok(Some(Vector {
            buf: self.buf,
            start: start + 4,
            len,
        }))
    }

    pub(crate) fn string(&self, slot: usize) -> Result<Option<String>> {
        match self.vector(slot)? {
            Some(vector) => {
                let bytes = vector.bytes(1)?;
                Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
            }
            None => Ok(None),
        }
    }
}

/// A vector: `len` elements starting at `start`.
#[derive(Clone, Copy)]
pub(crate) struct Vector<'a> {
    buf: &'a [u8],
    start: usize,
    len: usize,
}

impl<'a> Vector<'a> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Returns the raw bytes of a vector whose elements are `element_size` bytes each.
    pub(crate) fn bytes(&self, element_size: usize) -> Result<&'a [u8]> {
        self.len
            .checked_mul(element_size)
            .and_then(|size| self.start.checked_add(size))
            .and_then(|end| self.buf.get(self.start..end))
            .ok_or_else(|| {
                FormatError(format!(
                    "vector of {} elements at {} runs past the buffer",
                    self.len, self.start
                ))
            })
    }

    pub(crate) fn table(&self, index: usize) -> Result<Table<'a>> {
        if index >= self.len {
            return Err(FormatError(format!(
                "index {index} out of range for a vector of {} tables",
                self.len
            )));
        }
        let pos = self.start + 4 * index;
        Table::at(self.buf, follow(self.buf, pos)?)
    }

    pub(crate) fn i32s(&self) -> Result<Vec<i32>> {
        Ok(self
            .bytes(4)?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub(crate) fn f32s(&self) -> Result<Vec<f32>> {
        Ok(self
            .bytes(4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub(crate) fn i64s(&self) -> Result<Vec<i64>> {
        Ok(self
            .bytes(8)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds by hand a buffer with a root table of one i32 field (slot 1 = 7) and one
    /// vector of i32 (slot 0 = [3, -4]).
    fn sample() -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&12u32.to_le_bytes()); // 0: root offset -> table at 12
                                                     // 4: vtable: len 8, table len 12, slot0 at +4, slot1 at +8
        for v in [8u16, 12, 4, 8] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        // 12: table: soffset = 12 - 4 = 8
        buf.extend_from_slice(&8i32.to_le_bytes());
        // 16: slot 0: offset to vector at 24 (24 - 16 = 8)
        buf.extend_from_slice(&8u32.to_le_bytes());
        // 20: slot 1: i32 7
        buf.extend_from_slice(&7i32.to_le_bytes());
        // 24: vector len 2, [3, -4]
        buf.extend_from_slice(&2u32.to_le_bytes());
        buf.extend_from_slice(&3i32.to_le_bytes());
        buf.extend_from_slice(&(-4i32).to_le_bytes());
        buf
    }

    #[test]
    fn reads_scalar_and_vector_fields() {
        let buf = sample();
        let root = Table::root(&buf).unwrap();
        assert_eq!(root.i32(1, 0).unwrap(), 7);
        assert_eq!(root.i32(5, -1).unwrap(), -1);
        let vector = root.vector(0).unwrap().unwrap();
        assert_eq!(vector.i32s().unwrap(), vec![3, -4]);
    }

    #[test]
    fn truncated_vector_is_an_error() {
        let mut buf = sample();
        buf.truncate(30);
        let root = Table::root(&buf).unwrap();
        let vector = root.vector(0).unwrap().unwrap();
        assert!(vector.i32s().is_err());
    }
}
