package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// notableDeps are the dependencies whose versions matter when reporting a bug.
var notableDeps = []string{
	"github.com/IBM/sarama",
	"github.com/jackc/pgx/v5",
	"github.com/jackc/pglogrepl",
	"github.com/pelletier/go-toml/v2",
	"github.com/spf13/cobra",
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and the versions of Go and the main dependencies",
		Example: `  cdcrelay version
  go build -ldflags "-X main.version=v1.0.0" ./cmd/cdcrelay   # set the version at build time`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			w := a.stdout
			fmt.Fprintf(w, "cdcrelay %s\n", version)
			fmt.Fprintf(w, "  go      %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			bi, ok := debug.ReadBuildInfo()
			if !ok {
				return nil
			}
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					fmt.Fprintf(w, "  commit  %s\n", s.Value)
				case "vcs.modified":
					if s.Value == "true" {
						fmt.Fprintf(w, "  (built from a modified work tree)\n")
					}
				}
			}
			deps := map[string]string{}
			for _, d := range bi.Deps {
				v := d.Version
				if d.Replace != nil {
					v += " => " + d.Replace.Path + " " + d.Replace.Version
				}
				deps[d.Path] = v
			}
			for _, p := range notableDeps {
				if v, ok := deps[p]; ok {
					fmt.Fprintf(w, "  %s %s\n", p, v)
				}
			}
			return nil
		},
	}
}
