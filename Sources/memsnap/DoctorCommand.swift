import ArgumentParser
import MemSnap

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Report what this machine offers memsnap: kernel, pages, huge pages, memfd, tracking modes."
    )

    func run() throws {
        let report = SystemReport.current()
        var table = Table(columns: ["check", "", "found"])
        for entry in report.entries {
            table.append([entry.name, entry.usable ? "ok" : "NO", entry.value])
        }
        for mode in DirtyTrackingMode.allCases where mode != .auto {
            let availability = mode.availability
            table.append(["tracking: \(mode.rawValue)", availability == .available ? "ok" : "NO", availability.description])
        }
        let automatic = (try? DirtyTrackingMode.auto.resolved()).map(\.rawValue) ?? "nothing works"
        table.append(["tracking: auto", "ok", "chooses \(automatic)"])
        print(table.rendered())
    }
}
