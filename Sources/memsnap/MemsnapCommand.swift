import ArgumentParser

@main
struct MemsnapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memsnap",
        abstract: "Fast memory snapshots, dirty-page tracking and restore on Linux.",
        subcommands: [
            DoctorCommand.self, DemoCommand.self, CheckpointCommand.self, RestoreCommand.self, InfoCommand.self,
            VerifyCommand.self, StylesCommand.self, ArenaCommand.self, BenchCommand.self,
        ]
    )
}
