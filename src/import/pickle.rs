//! A pickle reader (protocols 2 to 5) that never runs code.
//!
//! Python's `pickle` rebuilds objects by importing and calling whatever the stream
//! names, so loading an untrusted `.pth` file with it can run arbitrary code. This
//! reader interprets the opcodes itself and resolves `GLOBAL`/`STACK_GLOBAL` only
//! against a fixed allow-list of names that PyTorch and fastai checkpoints use
//! ([`ALLOWED_GLOBALS`]). The few allowed callables are evaluated by Rust code here:
//! tensor rebuild functions become [`TensorRef`] values, `OrderedDict` becomes an
//! ordered [`Value::Dict`] and plain classes become [`Value::Object`] records.
//!
//! Persistent ids (`BINPERSID`) are read as PyTorch storage references, the only
//! kind `torch.save` writes.

use std::collections::HashMap;

use thiserror::Error;

/// Module and name of every global the reader accepts, as `(module, name)`.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
    // Protocol 2 pickles `bytes` as `_codecs.encode(text, "latin1")`.
    ("_codecs", "encode"),
    // fastai's list class, used for the optimizer's hyper-parameters in `Learner.save`.
    ("fastcore.foundation", "L"),
];

/// Element type of a PyTorch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    /// Maps a storage class name such as `FloatStorage` to its element type.
    pub fn from_storage_name(name: &str) -> Option<Self> {
        let dtype = match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        };
        Some(dtype)
    }

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A PyTorch storage named by a persistent id.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Key of the root storage: the entry name under `data/` in a zip checkpoint.
    pub key: String,
    /// Element type.
    pub dtype: StorageDtype,
    /// Number of elements of the root storage.
    pub numel: usize,
    /// Start of a storage view within the root storage, in elements (legacy format only).
    pub view_offset: usize,
}

/// A tensor that views a storage: `_rebuild_tensor_v2`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Key of the root storage.
    pub storage_key: String,
    /// Element type of the storage.
    pub dtype: StorageDtype,
    /// Number of elements of the root storage.
    pub storage_numel: usize,
    /// Offset of the first element within the root storage, in elements.
    pub offset: usize,
    /// Size of each dimension.
    pub shape: Vec<usize>,
    /// Stride of each dimension, in elements.
    pub strides: Vec<usize>,
}

/// A value decoded from a pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// An integer. Integers wider than 128 bits are rejected.
    Int(i128),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// A dict or `collections.OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A reference to an allowed global that was not called.
    Global {
        module: String,
        name: String,
    },
    /// An instance of an allowed class: constructor arguments and `BUILD` state.
    Object {
        module: String,
        name: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// A storage from a persistent id.
    Storage(StorageRef),
    /// A tensor rebuilt from a storage.
    Tensor(TensorRef),
}

impl Value {
    /// Returns the string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Errors of the pickle reader; offsets count bytes from the start of the pickle data.
#[derive(Debug, Error)]
pub enum PickleError {
    #[error("the pickle data ends at byte {offset}, but {needed} more bytes were expected (the file is cut off)")]
    Truncated { offset: usize, needed: usize },
    #[error("unknown or unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnknownOpcode { opcode: u8, offset: usize },
    #[error("the pickle references the global `{module}.{name}` at byte {offset}, which is not on the allow-list of safe names; the file may run code when loaded with Python, so it is rejected")]
    ForbiddenGlobal {
        module: String,
        name: String,
        offset: usize,
    },
    #[error("invalid pickle data at byte {offset}: {message}")]
    Invalid { offset: usize, message: String },
}

/// Maximum nesting depth of the decoded value tree; deeper or cyclic data is rejected.
const MAX_DEPTH: usize = 128;

/// A node of the object graph while the pickle runs. Containers refer to other nodes
/// by index, so mutations through the memo (`SETITEMS` after `BINPUT`) stay visible.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Object {
        module: String,
        name: String,
        args: Vec<usize>,
        state: Option<usize>,
    },
}

/// Stack entry: a node or a `MARK`.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Node(usize),
    Mark,
}

/// A pickle reader over a byte buffer that may hold several pickles back to back.
pub struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: HashMap<u32, usize>,
    storages: Vec<StorageRef>,
}

impl<'a> Unpickler<'a> {
    /// Creates a reader positioned at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
        }
    }

    /// Byte offset just past the last pickle read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Every storage that persistent ids have referenced so far, in order.
    pub fn storages(&self) -> &[StorageRef] {
        &self.storages
    }

    /// Reads one pickle, up to and including its `STOP` opcode.
    pub fn load(&mut self) -> Result<Value, PickleError> {
        self.nodes.clear();
        self.stack.clear();
        self.memo.clear();
        loop {
            let offset = self.pos;
            let opcode = self.read_u8()?;
            if opcode == b'.' {
                let root = self.pop_node(offset)?;
                return self.to_value(root, 0, offset);
            }
            self.step(opcode, offset)?;
        }
    }

    fn step(&mut self, opcode: u8, offset: usize) -> Result<(), PickleError> {
        match opcode {
            // PROTO
            0x80 => {
                let protocol = self.read_u8()?;
                if protocol > 5 {
                    return Err(invalid(
                        offset,
                        format!("pickle protocol {protocol} is newer than 5"),
                    ));
                }
            }
            // FRAME: the frame length is only a read-ahead hint.
            0x95 => {
                self.take(8)?;
            }
            b'(' => self.stack.push(Slot::Mark),
            b'0' => {
                self.pop_slot(offset)?;
            }
            b'1' => {
                self.pop_mark(offset)?;
            }
            b'2' => {
                let top = self.peek_node(offset)?;
                self.stack.push(Slot::Node(top));
            }
            b'N' => self.push_value(Value::None),
            0x88 => self.push_value(Value::Bool(true)),
            0x89 => self.push_value(Value::Bool(false)),
            b'J' => {
                let bytes = self.take_array::<4>()?;
                self.push_value(Value::Int(i32::from_le_bytes(bytes).into()));
            }
            b'K' => {
                let byte = self.read_u8()?;
                self.push_value(Value::Int(byte.into()));
            }
            b'M' => {
                let bytes = self.take_array::<2>()?;
                self.push_value(Value::Int(u16::from_le_bytes(bytes).into()));
            }
            0x8a => {
                let len = usize::from(self.read_u8()?);
                let value = self.read_long(len, offset)?;
                self.push_value(value);
            }
            0x8b => {
                let len = self.read_len4(offset)?;
                let value = self.read_long(len, offset)?;
                self.push_value(value);
            }
            b'G' => {
                let bytes = self.take_array::<8>()?;
                self.push_value(Value::Float(f64::from_be_bytes(bytes)));
            }
            0x8c => {
                let len = usize::from(self.read_u8()?);
                let text = self.read_utf8(len, offset)?;
                self.push_value(Value::String(text));
            }
            b'X' => {
                let len = self.read_len4(offset)?;
                let text = self.read_utf8(len, offset)?;
                self.push_value(Value::String(text));
            }
            0x8d => {
                let len = self.read_len8(offset)?;
                let text = self.read_utf8(len, offset)?;
                self.push_value(Value::String(text));
            }
            // SHORT_BINSTRING and BINSTRING: Python 2 `str`, decoded as text when it is UTF-8.
            b'U' | b'T' => {
                let len = if opcode == b'U' {
                    usize::from(self.read_u8()?)
                } else {
                    self.read_len4(offset)?
                };
                let bytes = self.take(len)?.to_vec();
                let value = match String::from_utf8(bytes) {
                    Ok(text) => Value::String(text),
                    Err(err) => Value::Bytes(err.into_bytes()),
                };
                self.push_value(value);
            }
            b'C' => {
                let len = usize::from(self.read_u8()?);
                let bytes = self.take(len)?.to_vec();
                self.push_value(Value::Bytes(bytes));
            }
            b'B' => {
                let len = self.read_len4(offset)?;
                let bytes = self.take(len)?.to_vec();
                self.push_value(Value::Bytes(bytes));
            }
            0x8e | 0x96 => {
                let len = self.read_len8(offset)?;
                let bytes = self.take(len)?.to_vec();
                self.push_value(Value::Bytes(bytes));
            }
            b'}' => self.push_node(Node::Dict(Vec::new())),
            b']' => self.push_node(Node::List(Vec::new())),
            b')' => self.push_node(Node::Tuple(Vec::new())),
            b'd' => {
                let items = self.pop_mark(offset)?;
                let pairs = pair_up(&items, offset)?;
                self.push_node(Node::Dict(pairs));
            }
            b'l' => {
                let items = self.pop_mark(offset)?;
                self.push_node(Node::List(items));
            }
            b't' => {
                let items = self.pop_mark(offset)?;
                self.push_node(Node::Tuple(items));
            }
            0x85..=0x87 => {
                let count = usize::from(opcode - 0x84);
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.pop_node(offset)?);
                }
                items.reverse();
                self.push_node(Node::Tuple(items));
            }
            b'a' => {
                let item = self.pop_node(offset)?;
                let list = self.peek_node(offset)?;
                self.extend_list(list, &[item], offset)?;
            }
            b'e' => {
                let items = self.pop_mark(offset)?;
                let list = self.peek_node(offset)?;
                self.extend_list(list, &items, offset)?;
            }
            b's' => {
                let value = self.pop_node(offset)?;
                let key = self.pop_node(offset)?;
                let dict = self.peek_node(offset)?;
                self.extend_dict(dict, &[(key, value)], offset)?;
            }
            b'u' => {
                let items = self.pop_mark(offset)?;
                let pairs = pair_up(&items, offset)?;
                let dict = self.peek_node(offset)?;
                self.extend_dict(dict, &pairs, offset)?;
            }
            b'q' => {
                let index = self.read_u8()?;
                let top = self.peek_node(offset)?;
                self.memo.insert(index.into(), top);
            }
            b'r' => {
                let index = u32::from_le_bytes(self.take_array::<4>()?);
                let top = self.peek_node(offset)?;
                self.memo.insert(index, top);
            }
            0x94 => {
                let index = u32::try_from(self.memo.len())
                    .map_err(|_| invalid(offset, "too many memo entries".into()))?;
                let top = self.peek_node(offset)?;
                self.memo.insert(index, top);
            }
            b'h' => {
                let index = self.read_u8()?;
                self.push_memo(index.into(), offset)?;
            }
            b'j' => {
                let index = u32::from_le_bytes(self.take_array::<4>()?);
                self.push_memo(index, offset)?;
            }
            b'c' => {
                let module = self.read_line(offset)?;
                let name = self.read_line(offset)?;
                self.push_global(module, name, offset)?;
            }
            0x93 => {
                let name = self.pop_string(offset)?;
                let module = self.pop_string(offset)?;
                self.push_global(module, name, offset)?;
            }
            b'R' => {
                let args = self.pop_node(offset)?;
                let callable = self.pop_node(offset)?;
                let args = self.tuple_items(args, offset)?;
                let result = self.call(callable, args, offset)?;
                self.stack.push(Slot::Node(result));
            }
            0x81 => {
                let args = self.pop_node(offset)?;
                let class = self.pop_node(offset)?;
                let args = self.tuple_items(args, offset)?;
                let result = self.call(class, args, offset)?;
                self.stack.push(Slot::Node(result));
            }
            // NEWOBJ_EX: keyword arguments are accepted only when empty.
            0x92 => {
                let kwargs = self.pop_node(offset)?;
                let args = self.pop_node(offset)?;
                let class = self.pop_node(offset)?;
                if !matches!(&self.nodes[kwargs], Node::Dict(items) if items.is_empty()) {
                    return Err(invalid(
                        offset,
                        "NEWOBJ_EX with keyword arguments is not supported".into(),
                    ));
                }
                let args = self.tuple_items(args, offset)?;
                let result = self.call(class, args, offset)?;
                self.stack.push(Slot::Node(result));
            }
            b'b' => {
                let state = self.pop_node(offset)?;
                let target = self.peek_node(offset)?;
                self.build(target, state, offset)?;
            }
            b'Q' => {
                let pid = self.pop_node(offset)?;
                let storage = self.persistent_storage(pid, offset)?;
                self.storages.push(storage.clone());
                self.push_value(Value::Storage(storage));
            }
            _ => return Err(PickleError::UnknownOpcode { opcode, offset }),
        }
        Ok(())
    }

    fn read_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], PickleError> {
        let available = self.data.len() - self.pos;
        if len > available {
            return Err(PickleError::Truncated {
                offset: self.data.len(),
                needed: len - available,
            });
        }
        let bytes = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn read_len4(&mut self, offset: usize) -> Result<usize, PickleError> {
        let len = u32::from_le_bytes(self.take_array::<4>()?);
        usize::try_from(len)
            .map_err(|_| invalid(offset, format!("length {len} does not fit in memory")))
    }

    fn read_len8(&mut self, offset: usize) -> Result<usize, PickleError> {
        let len = u64::from_le_bytes(self.take_array::<8>()?);
        usize::try_from(len)
            .map_err(|_| invalid(offset, format!("length {len} does not fit in memory")))
    }

    /// Reads a little-endian two's complement integer of `len` bytes (`LONG1`/`LONG4`).
    fn read_long(&mut self, len: usize, offset: usize) -> Result<Value, PickleError> {
        let bytes = self.take(len)?;
        if len > 16 {
            return Err(invalid(
                offset,
                format!("integer of {len} bytes is wider than 128 bits"),
            ));
        }
        let Some(&last) = bytes.last() else {
            return Ok(Value::Int(0));
        };
        let fill = if last & 0x80 != 0 { 0xff } else { 0x00 };
        let mut wide = [fill; 16];
        wide[..len].copy_from_slice(bytes);
        Ok(Value::Int(i128::from_le_bytes(wide)))
    }

    fn read_utf8(&mut self, len: usize, offset: usize) -> Result<String, PickleError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|err| invalid(offset, format!("string is not valid UTF-8: {err}")))
    }

    fn read_line(&mut self, offset: usize) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PickleError::Truncated {
                offset: self.data.len(),
                needed: 1,
            });
        };
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|err| invalid(offset, format!("GLOBAL name is not valid UTF-8: {err}")))?
            .to_owned();
        self.pos += end + 1;
        Ok(line)
    }

    fn push_node(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(Slot::Node(self.nodes.len() - 1));
    }

    fn push_value(&mut self, value: Value) {
        self.push_node(Node::Leaf(value));
    }

    fn push_memo(&mut self, index: u32, offset: usize) -> Result<(), PickleError> {
        let node = *self
            .memo
            .get(&index)
            .ok_or_else(|| invalid(offset, format!("memo entry {index} was never stored")))?;
        self.stack.push(Slot::Node(node));
        Ok(())
    }

    fn push_global(
        &mut self,
        module: String,
        name: String,
        offset: usize,
    ) -> Result<(), PickleError> {
        if !ALLOWED_GLOBALS
            .iter()
            .any(|&(m, n)| m == module && n == name)
        {
            return Err(PickleError::ForbiddenGlobal {
                module,
                name,
                offset,
            });
        }
        self.push_value(Value::Global { module, name });
        Ok(())
    }

    fn pop_slot(&mut self, offset: usize) -> Result<Slot, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| invalid(offset, "the stack is empty".into()))
    }

    fn pop_node(&mut self, offset: usize) -> Result<usize, PickleError> {
        match self.pop_slot(offset)? {
            Slot::Node(node) => Ok(node),
            Slot::Mark => Err(invalid(
                offset,
                "expected a value on the stack, found a MARK".into(),
            )),
        }
    }

    fn peek_node(&self, offset: usize) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Slot::Node(node)) => Ok(*node),
            Some(Slot::Mark) => Err(invalid(
                offset,
                "expected a value on the stack, found a MARK".into(),
            )),
            None => Err(invalid(offset, "the stack is empty".into())),
        }
    }

    /// Pops everything above the topmost `MARK`, and the mark itself.
    fn pop_mark(&mut self, offset: usize) -> Result<Vec<usize>, PickleError> {
        let mark = self
            .stack
            .iter()
            .rposition(|slot| matches!(slot, Slot::Mark))
            .ok_or_else(|| invalid(offset, "no MARK on the stack".into()))?;
        let items = self.stack[mark + 1..]
            .iter()
            .map(|slot| match slot {
                Slot::Node(node) => *node,
                Slot::Mark => unreachable!("rposition found the topmost mark"),
            })
            .collect();
        self.stack.truncate(mark);
        Ok(items)
    }

    fn pop_string(&mut self, offset: usize) -> Result<String, PickleError> {
        let node = self.pop_node(offset)?;
        match &self.nodes[node] {
            Node::Leaf(Value::String(text)) => Ok(text.clone()),
            _ => Err(invalid(offset, "STACK_GLOBAL expects two strings".into())),
        }
    }

    fn extend_list(
        &mut self,
        list: usize,
        items: &[usize],
        offset: usize,
    ) -> Result<(), PickleError> {
        match &mut self.nodes[list] {
            Node::List(existing) => {
                existing.extend_from_slice(items);
                Ok(())
            }
            // `L` and other list subclasses receive their items through APPENDS.
            Node::Object { args, .. } => {
                args.extend_from_slice(items);
                Ok(())
            }
            _ => Err(invalid(
                offset,
                "APPEND/APPENDS target is not a list".into(),
            )),
        }
    }

    fn extend_dict(
        &mut self,
        dict: usize,
        pairs: &[(usize, usize)],
        offset: usize,
    ) -> Result<(), PickleError> {
        match &mut self.nodes[dict] {
            Node::Dict(existing) => {
                existing.extend_from_slice(pairs);
                Ok(())
            }
            _ => Err(invalid(
                offset,
                "SETITEM/SETITEMS target is not a dict".into(),
            )),
        }
    }

    fn tuple_items(&self, node: usize, offset: usize) -> Result<Vec<usize>, PickleError> {
        match &self.nodes[node] {
            Node::Tuple(items) => Ok(items.clone()),
            _ => Err(invalid(offset, "call arguments are not a tuple".into())),
        }
    }

    fn global_name(&self, node: usize) -> Option<(&str, &str)> {
        match &self.nodes[node] {
            Node::Leaf(Value::Global { module, name }) => Some((module, name)),
            _ => None,
        }
    }

    /// Evaluates an allowed callable (`REDUCE`, `NEWOBJ`) without running any Python.
    fn call(
        &mut self,
        callable: usize,
        args: Vec<usize>,
        offset: usize,
    ) -> Result<usize, PickleError> {
        let Some((module, name)) = self.global_name(callable) else {
            return Err(invalid(offset, "only globals can be called".into()));
        };
        let (module, name) = (module.to_owned(), name.to_owned());
        let node = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => self.call_ordered_dict(&args, offset)?,
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                Node::Leaf(Value::Tensor(self.rebuild_tensor(&args, offset)?))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let data = *args
                    .first()
                    .ok_or_else(|| invalid(offset, format!("{name} needs a tensor argument")))?;
                return Ok(data);
            }
            ("_codecs", "encode") => {
                Node::Leaf(Value::Bytes(self.call_codecs_encode(&args, offset)?))
            }
            ("fastcore.foundation", "L") => Node::Object {
                module,
                name,
                args,
                state: None,
            },
            _ => {
                return Err(invalid(
                    offset,
                    format!("calling `{module}.{name}` is not supported"),
                ));
            }
        };
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn call_ordered_dict(&self, args: &[usize], offset: usize) -> Result<Node, PickleError> {
        let Some(&items) = args.first() else {
            return Ok(Node::Dict(Vec::new()));
        };
        let (Node::List(entries) | Node::Tuple(entries)) = &self.nodes[items] else {
            return Err(invalid(
                offset,
                "OrderedDict argument is not a list of pairs".into(),
            ));
        };
        let mut pairs = Vec::with_capacity(entries.len());
        for &entry in entries {
            match &self.nodes[entry] {
                Node::Tuple(pair) | Node::List(pair) if pair.len() == 2 => {
                    pairs.push((pair[0], pair[1]))
                }
                _ => {
                    return Err(invalid(
                        offset,
                        "OrderedDict argument is not a list of pairs".into(),
                    ))
                }
            }
        }
        Ok(Node::Dict(pairs))
    }

    /// `_codecs.encode(text, "latin1")` as protocol 2 writes `bytes`: one byte per code point.
    fn call_codecs_encode(&self, args: &[usize], offset: usize) -> Result<Vec<u8>, PickleError> {
        let text = match args.first().map(|&a| &self.nodes[a]) {
            Some(Node::Leaf(Value::String(text))) => text,
            _ => return Err(invalid(offset, "_codecs.encode needs a string".into())),
        };
        match args.get(1).map(|&a| &self.nodes[a]) {
            Some(Node::Leaf(Value::String(encoding)))
                if encoding == "latin1" || encoding == "latin-1" => {}
            _ => {
                return Err(invalid(
                    offset,
                    "_codecs.encode is supported only with \"latin1\"".into(),
                ))
            }
        }
        text.chars()
            .map(|c| {
                u8::try_from(u32::from(c))
                    .map_err(|_| invalid(offset, "latin1 text has a code point above 255".into()))
            })
            .collect()
    }

    fn rebuild_tensor(&self, args: &[usize], offset: usize) -> Result<TensorRef, PickleError> {
        if args.len() < 4 {
            return Err(invalid(
                offset,
                format!(
                    "tensor rebuild needs 4 or more arguments, got {}",
                    args.len()
                ),
            ));
        }
        let Node::Leaf(Value::Storage(storage)) = &self.nodes[args[0]] else {
            return Err(invalid(
                offset,
                "the tensor's first argument is not a storage".into(),
            ));
        };
        let storage_offset = self.node_usize(args[1], offset)?;
        let shape = self.node_usizes(args[2], offset)?;
        let strides = self.node_usizes(args[3], offset)?;
        if shape.len() != strides.len() {
            return Err(invalid(
                offset,
                format!(
                    "tensor has {} dimensions but {} strides",
                    shape.len(),
                    strides.len()
                ),
            ));
        }
        Ok(TensorRef {
            storage_key: storage.key.clone(),
            dtype: storage.dtype,
            storage_numel: storage.numel,
            offset: storage.view_offset + storage_offset,
            shape,
            strides,
        })
    }

    fn node_usize(&self, node: usize, offset: usize) -> Result<usize, PickleError> {
        match &self.nodes[node] {
            Node::Leaf(Value::Int(value)) => usize::try_from(*value)
                .map_err(|_| invalid(offset, format!("expected a size, found {value}"))),
            _ => Err(invalid(offset, "expected an integer".into())),
        }
    }

    fn node_usizes(&self, node: usize, offset: usize) -> Result<Vec<usize>, PickleError> {
        match &self.nodes[node] {
            Node::Tuple(items) | Node::List(items) => items
                .iter()
                .map(|&item| self.node_usize(item, offset))
                .collect(),
            _ => Err(invalid(offset, "expected a tuple of integers".into())),
        }
    }

    /// `BUILD`: stores the state of an object. The attributes of a dict (such as the
    /// `_metadata` that `state_dict()` attaches) and of a tensor are dropped.
    fn build(&mut self, target: usize, state: usize, offset: usize) -> Result<(), PickleError> {
        match &mut self.nodes[target] {
            Node::Object { state: slot, .. } => {
                *slot = Some(state);
                Ok(())
            }
            Node::Dict(_) | Node::Leaf(Value::Tensor(_)) => Ok(()),
            _ => Err(invalid(offset, "BUILD target is not an object".into())),
        }
    }

    /// Reads a PyTorch persistent id: `("storage", storage_type, key, location, numel)`,
    /// with a sixth item `view_metadata` in the legacy format.
    fn persistent_storage(&self, pid: usize, offset: usize) -> Result<StorageRef, PickleError> {
        let Node::Tuple(items) = &self.nodes[pid] else {
            return Err(invalid(offset, "persistent id is not a tuple".into()));
        };
        let text = |node: usize| match &self.nodes[node] {
            Node::Leaf(Value::String(text)) => Some(text.clone()),
            Node::Leaf(Value::Bytes(bytes)) => String::from_utf8(bytes.clone()).ok(),
            _ => None,
        };
        if items.len() < 5 || text(items[0]).as_deref() != Some("storage") {
            return Err(invalid(
                offset,
                "persistent id is not a PyTorch storage".into(),
            ));
        }
        let dtype = self
            .global_name(items[1])
            .and_then(|(_, name)| StorageDtype::from_storage_name(name))
            .ok_or_else(|| invalid(offset, "persistent id names no known storage type".into()))?;
        let key =
            text(items[2]).ok_or_else(|| invalid(offset, "storage key is not a string".into()))?;
        let numel = self.node_usize(items[4], offset)?;
        let mut view_offset = 0;
        if let Some(&view) = items.get(5) {
            match &self.nodes[view] {
                Node::Leaf(Value::None) => {}
                Node::Tuple(parts) if parts.len() == 3 => {
                    view_offset = self.node_usize(parts[1], offset)?
                }
                _ => {
                    return Err(invalid(
                        offset,
                        "storage view metadata is not (key, offset, size)".into(),
                    ))
                }
            }
        }
        Ok(StorageRef {
            key,
            dtype,
            numel,
            view_offset,
        })
    }

    fn to_value(&self, node: usize, depth: usize, offset: usize) -> Result<Value, PickleError> {
        if depth > MAX_DEPTH {
            return Err(invalid(
                offset,
                format!("data nests deeper than {MAX_DEPTH} levels or is cyclic"),
            ));
        }
        let convert = |items: &[usize]| -> Result<Vec<Value>, PickleError> {
            items
                .iter()
                .map(|&item| self.to_value(item, depth + 1, offset))
                .collect()
        };
        Ok(match &self.nodes[node] {
            Node::Leaf(value) => value.clone(),
            Node::List(items) => Value::List(convert(items)?),
            Node::Tuple(items) => Value::Tuple(convert(items)?),
            Node::Dict(pairs) => {
                let mut converted = Vec::with_capacity(pairs.len());
                for &(key, value) in pairs {
                    converted.push((
                        self.to_value(key, depth + 1, offset)?,
                        self.to_value(value, depth + 1, offset)?,
                    ));
                }
                Value::Dict(converted)
            }
            Node::Object {
                module,
                name,
                args,
                state,
            } => Value::Object {
                module: module.clone(),
                name: name.clone(),
                args: convert(args)?,
                state: match state {
                    Some(state) => Some(Box::new(self.to_value(*state, depth + 1, offset)?)),
                    None => None,
                },
            },
        })
    }
}

fn invalid(offset: usize, message: String) -> PickleError {
    PickleError::Invalid { offset, message }
}

fn pair_up(items: &[usize], offset: usize) -> Result<Vec<(usize, usize)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(invalid(offset, "odd number of items for a dict".into()));
    }
    Ok(items
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect())
}

/// Reads the first pickle in `data`.
pub fn from_slice(data: &[u8]) -> Result<Value, PickleError> {
    Unpickler::new(data).load()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_mutated_after_memoize_is_shared() {
        // {"a": [1]} built as: EMPTY_LIST, BINPUT 0, EMPTY_DICT, "a", BINGET 0, SETITEM,
        // then APPEND 1 to the memoized list afterwards.
        let data = b"\x80\x02]q\x00}X\x01\x00\x00\x00ah\x00sh\x00K\x01a0.";
        let value = from_slice(data).unwrap();
        let expected = Value::Dict(vec![(
            Value::String("a".into()),
            Value::List(vec![Value::Int(1)]),
        )]);
        assert_eq!(value, expected);
    }

    #[test]
    fn long1_decodes_negative_and_wide() {
        let negative = from_slice(b"\x80\x02\x8a\x01\xff.").unwrap();
        assert_eq!(negative, Value::Int(-1));
        let magic =
            from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap();
        assert_eq!(magic, Value::Int(0x1950A86A20F9469CFC6C));
    }

    #[test]
    fn cyclic_list_is_rejected() {
        // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: a list that contains itself.
        let err = from_slice(b"\x80\x02]q\x00h\x00a.").unwrap_err();
        assert!(matches!(err, PickleError::Invalid { .. }), "{err}");
    }

    #[test]
    fn unknown_opcode_names_byte_and_offset() {
        let err = from_slice(b"\x80\x02\xff.").unwrap_err();
        assert!(
            matches!(
                err,
                PickleError::UnknownOpcode {
                    opcode: 0xff,
                    offset: 2
                }
            ),
            "{err}"
        );
    }
}
