package scoring.engine;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import org.apache.spark.sql.api.java.UDF1;

/**
 * Values written the way Python's {@code repr} writes them.
 *
 * <p>The contract validator in Python puts {@code repr(value)} (cut to 60 characters) into
 * every refusal reason. The SQL validator must give the same text row by row, so these two
 * functions reproduce CPython's float and str repr: shortest round-trip digits with
 * CPython's switch to exponent notation, and CPython's quoting and escaping rules.
 */
public final class PyRepr {
  private static final int MAX_SHOWN = 60;

  private PyRepr() {}

  /** Python's {@code _show(value)}: the repr, cut to 57 characters plus "..." past 60. */
  public static String show(String repr) {
    int length = repr.codePointCount(0, repr.length());
    if (length <= MAX_SHOWN) {
      return repr;
    }
    return repr.substring(0, repr.offsetByCodePoints(0, MAX_SHOWN - 3)) + "...";
  }

  /** CPython's {@code repr(float(x))}. */
  public static String ofDouble(double x) {
    if (Double.isNaN(x)) {
      return "nan";
    }
    if (Double.isInfinite(x)) {
      return x > 0 ? "inf" : "-inf";
    }
    if (x == 0.0) {
      return 1.0 / x < 0 ? "-0.0" : "0.0";
    }
    // Shortest decimal that reads back as x: the digits CPython's dtoa (mode 0) produces.
    // Java 17's Double.toString is not always shortest, so it cannot be used here.
    BigDecimal exact = new BigDecimal(x);
    BigDecimal shortest = exact;
    for (int precision = 1; precision <= 17; precision++) {
      BigDecimal rounded = exact.round(new MathContext(precision, RoundingMode.HALF_EVEN));
      if (rounded.doubleValue() == x) {
        shortest = rounded;
        break;
      }
    }
    shortest = shortest.stripTrailingZeros();
    String digits = shortest.unscaledValue().abs().toString();
    // x = 0.DIGITS * 10^point
    int point = digits.length() - shortest.scale();
    StringBuilder out = new StringBuilder(x < 0 ? "-" : "");
    if (point <= -4 || point > 16) {
      out.append(digits.charAt(0));
      if (digits.length() > 1) {
        out.append('.').append(digits, 1, digits.length());
      }
      int exponent = point - 1;
      out.append(exponent < 0 ? "e-" : "e+");
      int magnitude = Math.abs(exponent);
      if (magnitude < 10) {
        out.append('0');
      }
      out.append(magnitude);
    } else if (point <= 0) {
      out.append("0.").append("0".repeat(-point)).append(digits);
    } else if (point >= digits.length()) {
      out.append(digits).append("0".repeat(point - digits.length())).append(".0");
    } else {
      out.append(digits, 0, point).append('.').append(digits, point, digits.length());
    }
    return out.toString();
  }

  /** CPython's {@code repr(str)}: quotes chosen like CPython, escapes for the unprintable. */
  public static String ofString(String s) {
    char quote = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
    StringBuilder out = new StringBuilder(s.length() + 2).append(quote);
    s.codePoints()
        .forEach(
            c -> {
              if (c == quote || c == '\\') {
                out.append('\\').appendCodePoint(c);
              } else if (c == '\t') {
                out.append("\\t");
              } else if (c == '\n') {
                out.append("\\n");
              } else if (c == '\r') {
                out.append("\\r");
              } else if (c < ' ' || c == 0x7f) {
                out.append(String.format("\\x%02x", c));
              } else if (c < 0x7f || printable(c)) {
                out.appendCodePoint(c);
              } else if (c <= 0xff) {
                out.append(String.format("\\x%02x", c));
              } else if (c <= 0xffff) {
                out.append(String.format("\\u%04x", c));
              } else {
                out.append(String.format("\\U%08x", c));
              }
            });
    return out.append(quote).toString();
  }

  /** CPython's str.isprintable for one non-ASCII code point (by Unicode category). */
  private static boolean printable(int c) {
    switch (Character.getType(c)) {
      case Character.CONTROL:
      case Character.FORMAT:
      case Character.SURROGATE:
      case Character.PRIVATE_USE:
      case Character.UNASSIGNED:
      case Character.LINE_SEPARATOR:
      case Character.PARAGRAPH_SEPARATOR:
      case Character.SPACE_SEPARATOR:
        return false;
      default:
        return true;
    }
  }

  /** SQL function {@code scoring_show_double(x)}: the shown repr of a double. */
  public static final class ShowDouble implements UDF1<Double, String> {
    private static final long serialVersionUID = 1L;

    @Override
    public String call(Double value) {
      return value == null ? "None" : show(ofDouble(value));
    }
  }

  /** SQL function {@code scoring_show_string(s)}: the shown repr of a string. */
  public static final class ShowString implements UDF1<String, String> {
    private static final long serialVersionUID = 1L;

    @Override
    public String call(String value) {
      return value == null ? "None" : show(ofString(value));
    }
  }
}
