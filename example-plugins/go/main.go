// name-policy: a naming rule for accounts, in Go.
//
// A pre-validation step on Create (or Update) of `account`: it refuses a name
// shorter than the step's configuration (a number, default 3) or one that starts or
// ends with a space, and traces the names it lets through.
//
// Go has no bindings generator for the component model here, so abi.go reads the
// execution context from the canonical ABI layout itself and writes the result;
// `plughost component new --embed-wit --realloc-via-memory-grow` makes the
// component (see build.sh).
package main

import (
	"fmt"
	"strconv"
	"strings"
)

func execute(ctx *context) error {
	target, ok := ctx.target()
	if !ok {
		return permanent("expected a Target record")
	}
	name, ok := target.text("name")
	if !ok {
		trace("no name on this record: nothing to check")
		return nil
	}
	minimum := 3
	if config, ok := ctx.configuration(); ok && config != "" {
		n, err := strconv.Atoi(strings.TrimSpace(config))
		if err != nil || n < 0 {
			return permanent(fmt.Sprintf("the step's configuration must be a minimum length, not %q", config))
		}
		minimum = n
	}
	if strings.TrimSpace(name) != name {
		return permanent(fmt.Sprintf("An account name cannot start or end with a space (got %q)", name))
	}
	if length := len([]rune(name)); length < minimum {
		return permanent(fmt.Sprintf("An account name needs at least %d characters (got %q, %d)", minimum, name, length))
	}
	trace(fmt.Sprintf("name %q passes the policy (at least %d characters)", name, minimum))
	return nil
}

func main() {}
