package reconcile

import (
	"context"
	"errors"
	"fmt"
)

// step is one idempotent unit of a plan. needed measures whether the step
// has work to do; do acts. A step with a nil needed always runs (its do must
// itself be idempotent and cheap) and is not verified.
type step struct {
	name   string
	reason string // failure reason recorded in the status when the step fails
	needed func(ctx context.Context) (bool, error)
	do     func(ctx context.Context) error
}

// stepError is a failed step: its reason and cause.
type stepError struct {
	step   string
	reason string
	err    error
}

func (e *stepError) Error() string { return fmt.Sprintf("%s: %v", e.step, e.err) }
func (e *stepError) Unwrap() error { return e.err }

// permanentError marks a failure that retrying cannot mend.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

func isPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// runPlan runs steps in order: each is checked, done when needed, and
// checked again to verify it took effect. Plans are built afresh for every
// pass from the stored record, so they carry no state between passes.
// after, when not nil, is called with the name of every step that acted.
func runPlan(ctx context.Context, steps []step, after func(step string)) error {
	done := func(name string) {
		if after != nil {
			after(name)
		}
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.needed == nil {
			if err := s.do(ctx); err != nil {
				return &stepError{s.name, s.reason, err}
			}
			done(s.name)
			continue
		}
		need, err := s.needed(ctx)
		if err != nil {
			return &stepError{s.name, s.reason, err}
		}
		if !need {
			continue
		}
		if err := s.do(ctx); err != nil {
			return &stepError{s.name, s.reason, err}
		}
		need, err = s.needed(ctx)
		if err == nil && need {
			err = errors.New("step did not take effect")
		}
		if err != nil {
			return &stepError{s.name, s.reason, err}
		}
		done(s.name)
	}
	return nil
}
