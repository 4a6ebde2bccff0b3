import MemSnap
import Testing

/// Text read from files (a checkpoint's info section) is printed with its control characters
/// made visible, so a crafted file cannot drive the terminal; ordinary text is unchanged.
@Suite("Text from files is safe to print on a terminal")
struct TerminalTextTests {
    @Test func escapeSequencesAndC0ControlsBecomeVisible() {
        #expect(TerminalText.escaped("\u{1B}]0;owned\u{07}host") == "\\u{1B}]0;owned\\u{7}host")
        #expect(TerminalText.escaped("a\u{1B}[2J\u{1B}[Hb") == "a\\u{1B}[2J\\u{1B}[Hb")
        #expect(TerminalText.escaped("line\nnext\r\tend\u{0}") == "line\\u{A}next\\u{D}\\u{9}end\\u{0}")
    }

    @Test func delAndC1ControlsBecomeVisible() {
        #expect(TerminalText.escaped("x\u{7F}y") == "x\\u{7F}y")
        #expect(TerminalText.escaped("\u{9B}31m red \u{80}\u{9F}") == "\\u{9B}31m red \\u{80}\\u{9F}")
    }

    @Test func bidiControlsBecomeVisible() {
        #expect(TerminalText.escaped("user\u{202E}fdp.exe") == "user\\u{202E}fdp.exe")
        let all = (0x202A...0x202E).map { String(UnicodeScalar($0)!) }.joined() + (0x2066...0x2069).map { String(UnicodeScalar($0)!) }.joined()
        #expect(TerminalText.escaped(all) == "\\u{202A}\\u{202B}\\u{202C}\\u{202D}\\u{202E}\\u{2066}\\u{2067}\\u{2068}\\u{2069}")
    }

    @Test func ordinaryTextIsUnchanged() {
        for text in ["memsnap", "host-01.example.com", "2026-11-21T00:00:00Z", "Jürgen Ødegård", "東京 🚀 café", "back\\slash", "",
                     "\u{A0}non-breaking", "\u{200D}joiner"] {
            #expect(TerminalText.escaped(text) == text)
        }
    }
}
