package mapping

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Date and time values. pgoutput formats them with the walsender session's
// DateStyle, TimeZone and IntervalStyle; these functions expect DateStyle ISO
// (the default) and IntervalStyle postgres (the default) or iso_8601, accept
// any TimeZone, and refuse other styles with an error rather than guess.
//
//	date         "2024-01-02"                        as sent
//	time         "03:04:05.123456"                   as sent
//	timetz       "03:04:05+02:00"                    offset written ±hh:mm
//	timestamp    "2024-01-02T03:04:05.123456"        ISO 8601, no zone
//	timestamptz  "2024-01-02T01:04:05.123456Z"       RFC 3339, converted to UTC
//	interval     "P1Y2M3DT4H5M6.789S"                ISO 8601, as IntervalStyle iso_8601
//
// Values a format cannot hold (infinity, -infinity, BC dates, years past 9999
// for timestamptz) are Postgres's text, as a string.

func isSpecialTime(text []byte) bool {
	s := string(text)
	return s == "infinity" || s == "-infinity" || strings.HasSuffix(s, " BC")
}

func encodeDate(dst []byte, text []byte) ([]byte, error) {
	if !isSpecialTime(text) {
		if _, _, _, rest, ok := parseDate(string(text)); !ok || rest != "" {
			return dst, fmt.Errorf("date %q is not in DateStyle ISO (YYYY-MM-DD)", text)
		}
	}
	return appendString(dst, text)
}

func encodeTime(dst []byte, text []byte) ([]byte, error) {
	if _, _, _, _, rest, ok := parseClock(string(text)); !ok || rest != "" {
		return dst, fmt.Errorf("time %q is not hh:mm:ss[.ffffff]", text)
	}
	return appendString(dst, text)
}

func encodeTimetz(dst []byte, text []byte) ([]byte, error) {
	s := string(text)
	_, _, _, _, rest, ok := parseClock(s)
	if !ok {
		return dst, fmt.Errorf("timetz %q is not hh:mm:ss[.ffffff]±hh[:mm[:ss]]", text)
	}
	off, rest2, ok := parseOffset(rest)
	if !ok || rest2 != "" {
		return dst, fmt.Errorf("timetz %q is not hh:mm:ss[.ffffff]±hh[:mm[:ss]]", text)
	}
	return appendValidString(dst, s[:len(s)-len(rest)]+formatOffset(off)), nil
}

func encodeTimestamp(dst []byte, text []byte) ([]byte, error) {
	if isSpecialTime(text) {
		return appendString(dst, text)
	}
	s := string(text)
	_, _, _, rest, ok := parseDate(s)
	if ok && strings.HasPrefix(rest, " ") {
		_, _, _, _, rest2, ok2 := parseClock(rest[1:])
		if ok2 && rest2 == "" {
			return appendValidString(dst, s[:len(s)-len(rest)]+"T"+rest[1:]), nil
		}
	}
	return dst, fmt.Errorf("timestamp %q is not in DateStyle ISO (YYYY-MM-DD hh:mm:ss[.ffffff])", text)
}

func encodeTimestamptz(dst []byte, text []byte) ([]byte, error) {
	if isSpecialTime(text) {
		return appendString(dst, text)
	}
	t, frac, err := parseTimestamptz(string(text))
	if err != nil {
		return dst, err
	}
	if t.Year() < 1 || t.Year() > 9999 {
		return appendString(dst, text)
	}
	return appendValidString(dst, formatRFC3339(t, frac)), nil
}

// formatRFC3339 writes t (UTC) with exactly the fraction digits given.
func formatRFC3339(t time.Time, frac string) string {
	s := t.Format("2006-01-02T15:04:05")
	if frac != "" {
		s += "." + frac
	}
	return s + "Z"
}

// parseTimestamptz reads "YYYY-MM-DD hh:mm:ss[.ffffff]±hh[:mm[:ss]]" and
// returns the instant in UTC and the fraction digits as sent.
func parseTimestamptz(s string) (time.Time, string, error) {
	bad := func() (time.Time, string, error) {
		return time.Time{}, "", fmt.Errorf("timestamptz %q is not in DateStyle ISO (YYYY-MM-DD hh:mm:ss[.ffffff]±hh[:mm])", s)
	}
	y, mo, d, rest, ok := parseDate(s)
	if !ok || !strings.HasPrefix(rest, " ") {
		return bad()
	}
	h, mi, sec, frac, rest, ok := parseClock(rest[1:])
	if !ok {
		return bad()
	}
	off, rest, ok := parseOffset(rest)
	if !ok || rest != "" {
		return bad()
	}
	t := time.Date(y, time.Month(mo), d, h, mi, sec, 0, time.UTC).Add(-time.Duration(off) * time.Second)
	return t, frac, nil
}

// parseDate reads "YYYY-MM-DD" (four or more year digits).
func parseDate(s string) (y, m, d int, rest string, ok bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i < 4 || i > 9 || len(s) < i+6 || s[i] != '-' || s[i+3] != '-' {
		return 0, 0, 0, "", false
	}
	y, _ = strconv.Atoi(s[:i])
	m, ok1 := twoDigits(s[i+1:])
	d, ok2 := twoDigits(s[i+4:])
	if !ok1 || !ok2 || m < 1 || m > 12 || d < 1 || d > 31 {
		return 0, 0, 0, "", false
	}
	return y, m, d, s[i+6:], true
}

// parseClock reads "hh:mm:ss[.f+]".
func parseClock(s string) (h, m, sec int, frac, rest string, ok bool) {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return
	}
	var ok1, ok2, ok3 bool
	h, ok1 = twoDigits(s)
	m, ok2 = twoDigits(s[3:])
	sec, ok3 = twoDigits(s[6:])
	if !ok1 || !ok2 || !ok3 || h > 24 || m > 59 || sec > 60 {
		return
	}
	rest = s[8:]
	if strings.HasPrefix(rest, ".") {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 1 {
			return
		}
		frac, rest = rest[1:i], rest[i:]
	}
	return h, m, sec, frac, rest, true
}

// parseOffset reads "±hh[:mm[:ss]]" into seconds east of UTC.
func parseOffset(s string) (int, string, bool) {
	if len(s) < 3 || s[0] != '+' && s[0] != '-' {
		return 0, "", false
	}
	sign := 1
	if s[0] == '-' {
		sign = -1
	}
	h, ok := twoDigits(s[1:])
	if !ok {
		return 0, "", false
	}
	secs := h * 3600
	rest := s[3:]
	for _, mul := range []int{60, 1} {
		if len(rest) < 3 || rest[0] != ':' {
			break
		}
		v, ok := twoDigits(rest[1:])
		if !ok || v > 59 {
			return 0, "", false
		}
		secs += v * mul
		rest = rest[3:]
	}
	return sign * secs, rest, true
}

func formatOffset(secs int) string {
	sign := byte('+')
	if secs < 0 {
		sign, secs = '-', -secs
	}
	s := fmt.Sprintf("%c%02d:%02d", sign, secs/3600, secs/60%60)
	if secs%60 != 0 {
		s += fmt.Sprintf(":%02d", secs%60)
	}
	return s
}

func twoDigits(s string) (int, bool) {
	if len(s) < 2 || s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' {
		return 0, false
	}
	return int(s[0]-'0')*10 + int(s[1]-'0'), true
}

// encodeInterval writes an interval as ISO 8601, exactly as Postgres's
// IntervalStyle iso_8601 would: the fields months, days and microseconds are
// kept apart (P1M is not P30D), each part carries its own sign.
func encodeInterval(dst []byte, text []byte) ([]byte, error) {
	s := string(text)
	if s == "infinity" || s == "-infinity" || strings.HasPrefix(s, "P") || strings.HasPrefix(s, "-P") {
		return appendString(dst, text)
	}
	months, days, usecs, err := parsePostgresInterval(s)
	if err != nil {
		return dst, err
	}
	return appendValidString(dst, formatISOInterval(months, days, usecs)), nil
}

// parsePostgresInterval reads IntervalStyle postgres output:
// "[N year[s]] [N mon[s]] [N day[s]] [[+-]hh:mm:ss[.ffffff]]".
func parsePostgresInterval(s string) (months, days, usecs int64, err error) {
	bad := fmt.Errorf("interval %q is not in IntervalStyle postgres or iso_8601", s)
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, 0, 0, bad
	}
	for i := 0; i < len(f); i++ {
		tok := f[i]
		if strings.Contains(tok, ":") {
			if i != len(f)-1 {
				return 0, 0, 0, bad
			}
			usecs, err = parseIntervalClock(tok)
			if err != nil {
				return 0, 0, 0, bad
			}
			break
		}
		if i+1 >= len(f) {
			return 0, 0, 0, bad
		}
		n, err := strconv.ParseInt(strings.TrimPrefix(tok, "+"), 10, 64)
		if err != nil {
			return 0, 0, 0, bad
		}
		i++
		switch f[i] {
		case "year", "years":
			months += n * 12
		case "mon", "mons":
			months += n
		case "day", "days":
			days += n
		default:
			return 0, 0, 0, bad
		}
	}
	return months, days, usecs, nil
}

func parseIntervalClock(tok string) (int64, error) {
	sign := int64(1)
	switch tok[0] {
	case '-':
		sign, tok = -1, tok[1:]
	case '+':
		tok = tok[1:]
	}
	parts := strings.Split(tok, ":")
	if len(parts) != 3 {
		return 0, fmt.Errorf("bad clock")
	}
	h, err1 := strconv.ParseInt(parts[0], 10, 64)
	m, err2 := strconv.ParseInt(parts[1], 10, 64)
	secPart, fracPart, _ := strings.Cut(parts[2], ".")
	sec, err3 := strconv.ParseInt(secPart, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || len(fracPart) > 6 || h < 0 || m < 0 || sec < 0 {
		return 0, fmt.Errorf("bad clock")
	}
	var frac int64
	if fracPart != "" {
		v, err := strconv.ParseInt(fracPart, 10, 64)
		if err != nil {
			return 0, err
		}
		frac = v
		for i := len(fracPart); i < 6; i++ {
			frac *= 10
		}
	}
	return sign * ((h*3600+m*60+sec)*1_000_000 + frac), nil
}

// formatISOInterval follows Postgres's EncodeInterval, INTSTYLE_ISO_8601.
func formatISOInterval(months, days, usecs int64) string {
	year, mon := months/12, months%12
	hour := usecs / 3_600_000_000
	usecs -= hour * 3_600_000_000
	min := usecs / 60_000_000
	usecs -= min * 60_000_000
	sec := usecs / 1_000_000
	fsec := usecs - sec*1_000_000
	if year == 0 && mon == 0 && days == 0 && hour == 0 && min == 0 && sec == 0 && fsec == 0 {
		return "PT0S"
	}
	var b strings.Builder
	b.WriteByte('P')
	part := func(v int64, unit byte) {
		if v != 0 {
			b.WriteString(strconv.FormatInt(v, 10))
			b.WriteByte(unit)
		}
	}
	part(year, 'Y')
	part(mon, 'M')
	part(days, 'D')
	if hour != 0 || min != 0 || sec != 0 || fsec != 0 {
		b.WriteByte('T')
	}
	part(hour, 'H')
	part(min, 'M')
	if sec != 0 || fsec != 0 {
		if sec < 0 || fsec < 0 {
			b.WriteByte('-')
		}
		b.WriteString(strconv.FormatInt(abs(sec), 10))
		if fsec != 0 {
			f := strings.TrimRight(fmt.Sprintf("%06d", abs(fsec)), "0")
			b.WriteString("." + f)
		}
		b.WriteByte('S')
	}
	return b.String()
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
