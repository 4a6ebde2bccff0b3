/// Text from files made safe to print on a terminal.
///
/// A checkpoint's info section (or any string read from a file) may hold escape sequences that
/// move the cursor, rewrite earlier lines, set the window title, or bidi controls that reorder
/// what is shown. Printed raw, a crafted file could make `memsnap info` show anything.
///
/// Thread safety: pure functions.
package enum TerminalText {
    /// `text` with every control character replaced by a visible Swift-style escape, `\u{1B}`:
    /// C0 controls (U+0000–U+001F, tab and newline included), DEL (U+007F), C1 controls
    /// (U+0080–U+009F), and the Unicode bidi embedding, override and isolate controls
    /// (U+202A–U+202E, U+2066–U+2069). Everything else, non-ASCII letters and symbols included,
    /// is unchanged, so ordinary text prints as it is.
    package static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var result = ""
        result.reserveCapacity(text.utf8.count + 16)
        for scalar in text.unicodeScalars {
            if isControl(scalar) {
                result += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    /// Whether `scalar` is one of the characters `escaped` replaces.
    package static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x202A...0x202E, 0x2066...0x2069: true
        default: false
        }
    }
}
