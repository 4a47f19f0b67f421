package keypool

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// Strategy is how a pool chooses among its usable keys.
type Strategy string

// The strategies.
const (
	// StrategyPriority: the first usable key in the configuration's order serves,
	// which keeps provider-side prompt caches warm on one key. The default.
	StrategyPriority Strategy = "priority"
	// StrategyWeighted: every usable key serves a share of the requests
	// proportional to its weight.
	StrategyWeighted Strategy = "weighted"
	// StrategyTiered: keys form ordered tiers; the first tier with a usable key
	// serves, spread by weight inside the tier. Lower tier numbers come first.
	StrategyTiered Strategy = "tiered"
)

// Strategies lists every strategy, in a stable order.
func Strategies() []Strategy { return []Strategy{StrategyPriority, StrategyWeighted, StrategyTiered} }

// ParseStrategy returns the Strategy named s.
func ParseStrategy(s string) (Strategy, error) {
	for _, st := range Strategies() {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("unknown strategy %q (want one of %v)", s, Strategies())
}

// MaxWeight bounds a key's weight, so the sum over a pool cannot overflow.
const MaxWeight = 1_000_000

// layout is the static shape of a pool's selection: its tiers, in the order they
// are tried, each listing key indices in configuration order, and each key's
// weight and tier.
type layout struct {
	tiers   [][]int32
	tierOf  []int32 // index into tiers, per key
	weights []uint64
	uniform []bool // per tier: all weights equal
}

// newLayout checks the strategy's weights and tiers (nil means the defaults: weight
// 1, tier 0) and builds the pool's layout.
func newLayout(strategy Strategy, n int, weights, tiers []int) (layout, error) {
	var errs []error
	if weights != nil && len(weights) != n {
		errs = append(errs, fmt.Errorf("%d weights for %d keys", len(weights), n))
	}
	if tiers != nil && len(tiers) != n {
		errs = append(errs, fmt.Errorf("%d tiers for %d keys", len(tiers), n))
	}
	switch strategy {
	case StrategyPriority:
		if weights != nil || tiers != nil {
			errs = append(errs, errors.New("weights and tiers apply only to the weighted and tiered strategies"))
		}
	case StrategyWeighted:
		if tiers != nil {
			errs = append(errs, errors.New("tiers apply only to the tiered strategy"))
		}
	case StrategyTiered:
	default:
		_, err := ParseStrategy(string(strategy))
		errs = append(errs, err)
	}
	for i, w := range weights {
		if w < 1 || w > MaxWeight {
			errs = append(errs, fmt.Errorf("key %d: weight %d is outside [1, %d]", i, w, MaxWeight))
		}
	}
	for i, t := range tiers {
		if t < 0 {
			errs = append(errs, fmt.Errorf("key %d: tier %d is negative", i, t))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return layout{}, err
	}

	l := layout{tierOf: make([]int32, n), weights: make([]uint64, n)}
	for i := range n {
		l.weights[i] = 1
		if weights != nil {
			l.weights[i] = uint64(weights[i])
		}
	}
	switch strategy {
	case StrategyPriority:
		for i := range n {
			l.tiers = append(l.tiers, []int32{int32(i)})
		}
	case StrategyWeighted:
		all := make([]int32, n)
		for i := range all {
			all[i] = int32(i)
		}
		l.tiers = [][]int32{all}
	case StrategyTiered:
		numbers := make([]int, n)
		if tiers != nil {
			copy(numbers, tiers)
		}
		distinct := slices.Clone(numbers)
		slices.Sort(distinct)
		distinct = slices.Compact(distinct)
		l.tiers = make([][]int32, len(distinct))
		for i, t := range numbers {
			j, _ := slices.BinarySearch(distinct, t)
			l.tiers[j] = append(l.tiers[j], int32(i))
		}
	}
	l.uniform = make([]bool, len(l.tiers))
	for ti, keys := range l.tiers {
		l.uniform[ti] = true
		for _, k := range keys {
			l.tierOf[k] = int32(ti)
			if l.weights[k] != l.weights[keys[0]] {
				l.uniform[ti] = false
			}
		}
	}
	return l, nil
}

// aliasTable samples an index with probability proportional to its weight in O(1)
// (Walker's alias method, built with Vose's algorithm).
type aliasTable struct {
	// threshold[i] is the chance, scaled to 2^64, of keeping i when i is drawn;
	// otherwise alias[i] is chosen.
	threshold []uint64
	alias     []int32
}

func newAliasTable(weights []uint64) aliasTable {
	n := len(weights)
	var total uint64
	for _, w := range weights {
		total += w
	}
	// scaled[i] = weights[i]*n/total, kept as the numerator over total to stay exact.
	scaled := make([]uint64, n)
	small := make([]int32, 0, n)
	large := make([]int32, 0, n)
	for i, w := range weights {
		scaled[i] = w * uint64(n)
		if scaled[i] < total {
			small = append(small, int32(i))
		} else {
			large = append(large, int32(i))
		}
	}
	t := aliasTable{threshold: make([]uint64, n), alias: make([]int32, n)}
	for len(small) > 0 && len(large) > 0 {
		s, l := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		t.threshold[s] = fraction(scaled[s], total)
		t.alias[s] = l
		scaled[l] -= total - scaled[s]
		if scaled[l] < total {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	for _, i := range large {
		t.threshold[i], t.alias[i] = ^uint64(0), i
	}
	for _, i := range small { // only rounding leaves any here
		t.threshold[i], t.alias[i] = ^uint64(0), i
	}
	return t
}

// fraction is num/den scaled to 2^64, for num < den.
func fraction(num, den uint64) uint64 {
	q, _ := bits.Div64(num, 0, den)
	return q
}

// sample draws an index from one random number: its high part picks a column, its
// low part (the uniform fractional remainder) decides between the column and its
// alias.
func (t aliasTable) sample(r uint64) int32 {
	i, frac := bits.Mul64(r, uint64(len(t.threshold)))
	if frac < t.threshold[i] || t.threshold[i] == ^uint64(0) {
		return int32(i)
	}
	return t.alias[i]
}
