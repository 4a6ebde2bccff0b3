#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import MemSnap

@main
struct MemsnapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memsnap",
        abstract: "Fast memory snapshots, dirty-page tracking and restore on Linux.",
        subcommands: [
            DoctorCommand.self, DemoCommand.self, CheckpointCommand.self, RestoreCommand.self, InfoCommand.self,
            VerifyCommand.self, SquashCommand.self, StylesCommand.self, ArenaCommand.self, ServeCommand.self, BenchCommand.self,
            WasmCommand.self,
        ]
    )

    /// Installs the temporary-file cleanup first, so Ctrl-C (SIGINT), SIGTERM or a closed terminal
    /// (SIGHUP) during `checkpoint` or `restore` leaves no `.NAME.tmp-XXXX` behind; the process
    /// still dies of the signal.
    static func main() async {
        do {
            try TemporaryFileCleanup.installHandlers()
        } catch {
            FileHandleOutput.standardError("memsnap: warning: \(error)\n")
        }
        await main(nil)
    }
}
