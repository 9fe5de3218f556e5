//! The CLI reference (`docs/cli.md`), generated from the clap definition of [`crate::Cli`].
//!
//! Invariant: `docs/cli.md` is exactly [`markdown`]'s text (a test compares them), so the
//! reference shows every visible command and option with the help `kiln --help` prints.

use clap::CommandFactory;
use std::fmt::Write as _;

/// The reference: an index of the commands, then each command's full `--help`.
pub fn markdown() -> String {
    let mut cli = crate::Cli::command().term_width(100);
    cli.build();
    let mut md = String::from(
        "# `kiln` command-line reference\n\n\
         <!-- Generated from the CLI's definition (crates/cli/src/reference.rs): do not edit.\n     \
         Regenerate with `KILN_BLESS=1 cargo test -p kiln-cli cli_reference`. -->\n\n",
    );
    let _ = writeln!(md, "```text\n{}```\n", cli.render_long_help());
    let visible = |c: &clap::Command| !c.is_hide_set() && c.get_name() != "help";
    let commands: Vec<&clap::Command> = cli.get_subcommands().filter(|c| visible(c)).collect();
    for c in &commands {
        let _ = writeln!(
            md,
            "- [`kiln {}`](#kiln-{}): {}",
            c.get_name(),
            c.get_name(),
            c.get_about().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    for c in commands {
        section(&mut md, "##", &format!("kiln {}", c.get_name()), c);
        for sub in c.get_subcommands().filter(|s| visible(s)) {
            let path = format!("kiln {} {}", c.get_name(), sub.get_name());
            section(&mut md, "###", &path, sub);
        }
    }
    md
}

/// A heading and the command's full help.
fn section(md: &mut String, level: &str, path: &str, c: &clap::Command) {
    let help = c.clone().render_long_help();
    let _ = write!(md, "\n{level} {path}\n\n```text\n{help}```\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let generated = super::markdown();
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == generated,
            "docs/cli.md is not the CLI's current reference: regenerate it with \
             `KILN_BLESS=1 cargo test -p kiln-cli cli_reference`"
        );
    }
}
