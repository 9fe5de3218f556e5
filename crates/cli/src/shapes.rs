//! Import arguments: `--input-shape NAME=D0,D1,...` parsing and `--int8-numerics`.
//!
//! Invariant: a parsed binding has a non-empty name and only non-negative integer dims (`NAME=`
//! binds a scalar); [`to_options`] refuses a name bound twice.

use crate::error::CliError;
use kiln_onnx::ImportOptions;

/// The arguments of a command that imports a model.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ImportArgs {
    /// Bind an input's shape, e.g. `input=1,3,224,224` (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS", value_parser = parse_binding)]
    pub input_shapes: Vec<ShapeBinding>,
    /// Arithmetic of int8 QDQ models.
    #[arg(long, value_enum, default_value = "onnxruntime")]
    pub int8_numerics: Int8NumericsArg,
}

/// `--int8-numerics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Int8NumericsArg {
    /// Bit for bit what onnxruntime's CPU provider computes (its fused integer kernels and
    /// float fallbacks).
    #[default]
    Onnxruntime,
    /// TOSA v1.0 integer ops with fixed-point RESCALE, as TOSA hardware computes.
    Tosa,
}

impl From<Int8NumericsArg> for kiln_onnx::Int8Numerics {
    fn from(a: Int8NumericsArg) -> Self {
        match a {
            Int8NumericsArg::Onnxruntime => kiln_onnx::Int8Numerics::OnnxRuntime,
            Int8NumericsArg::Tosa => kiln_onnx::Int8Numerics::Tosa,
        }
    }
}

/// One `--input-shape` value: an input name and the shape bound to it.
pub type ShapeBinding = (String, Vec<usize>);

/// Parses `NAME=1,3,224,224` (clap value parser; the message becomes a usage error).
pub fn parse_binding(s: &str) -> Result<ShapeBinding, String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=D0,D1,... (missing `=`)"))?;
    if name.is_empty() {
        return Err(format!("`{s}` has an empty input name"));
    }
    let dims = dims.trim();
    if dims.is_empty() {
        return Ok((name.to_string(), vec![]));
    }
    let shape = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{d}` in `{s}` is not a non-negative integer dimension"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), shape))
}

/// Import options binding every given shape.
pub fn to_options(bindings: &[ShapeBinding]) -> Result<ImportOptions, CliError> {
    let mut options = ImportOptions::default();
    for (name, shape) in bindings {
        if options
            .input_shapes
            .insert(name.clone(), shape.clone())
            .is_some()
        {
            return Err(CliError::Usage(format!(
                "--input-shape given twice for `{name}`"
            )));
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bindings() {
        assert_eq!(
            parse_binding("input=1,3,224,224").unwrap(),
            ("input".to_string(), vec![1, 3, 224, 224])
        );
        assert_eq!(
            parse_binding("a=b=2, 3").unwrap(),
            ("a=b".to_string(), vec![2, 3])
        );
        assert_eq!(parse_binding("s=").unwrap(), ("s".to_string(), vec![]));
    }

    #[test]
    fn rejects_bad_bindings() {
        for bad in ["input", "=1,2", "x=1,,2", "x=1,-3", "x=a", "x=1.5"] {
            assert!(parse_binding(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rejects_duplicates() {
        let b = vec![("x".to_string(), vec![1]), ("x".to_string(), vec![2])];
        assert!(to_options(&b).is_err());
    }
}
