import CMemSnap
import SystemPackage

/// memsnap's process-wide SIGSEGV handler, which `segfault` tracking relies on, as other modules
/// of the package see it.
///
/// Signal handlers form a chain: the handler installed last sees a fault first and passes on
/// what is not its own. memsnap's handler passes on every fault outside its records; a
/// WebAssembly engine's (WasmKit's) turns every fault inside its linear memory into a trap and
/// passes on nothing there. Segfault tracking of such memory therefore works only with
/// memsnap's handler installed after the engine's.
///
/// Thread safety: both members may be called from any thread.
package enum SegfaultHandler {
    /// Installs memsnap's handler if it is not installed yet (once per process; a no-op after).
    /// - Throws: `.systemCall("sigaction", ...)`.
    package static func install() throws(MemSnapError) {
        let status = memsnap_segv_install()
        guard status == 0 else {
            throw MemSnapError("install memsnap's SIGSEGV handler", .systemCall("sigaction", Errno(rawValue: status)))
        }
    }

    /// Whether memsnap's handler is installed and no other handler was installed after it.
    package static var isOutermost: Bool { memsnap_segv_is_outermost() == 1 }
}
