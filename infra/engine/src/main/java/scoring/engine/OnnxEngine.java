package scoring.engine;

import ai.onnxruntime.NodeInfo;
import ai.onnxruntime.OnnxJavaType;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.TensorInfo;
import java.util.Arrays;
import java.util.Map;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * Entry points PySpark calls through the JVM gateway (scoring.batch.jvm).
 *
 * <p>{@link #score} appends a {@code score} column computed by the artifact's ONNX graph
 * inside the executors: no row leaves the JVM.
 */
public final class OnnxEngine {
  /** Rows per ONNX Runtime call when the caller does not say. */
  public static final int DEFAULT_BATCH_ROWS = 8192;

  private OnnxEngine() {}

  /** Registers the SQL functions the contract validator's expressions call. */
  public static void registerFunctions(SparkSession spark) {
    spark.udf().register("scoring_show_double", new PyRepr.ShowDouble(), DataTypes.StringType);
    spark.udf().register("scoring_show_string", new PyRepr.ShowString(), DataTypes.StringType);
  }

  /**
   * Scores {@code frame} with the ONNX graph.
   *
   * @param frame its first {@code keep} columns are passed through; the columns after them
   *     are the model's features in contract order, numbers as double and strings as string
   *     (null for a missing value)
   * @param keep how many leading columns are passed through
   * @param skip index of a column that is non-null on rows not to score (they get a null
   *     score), or -1
   * @param graph the ONNX bytes, broadcast once to every executor
   * @param sha256 the graph's checksum from the contract
   * @param tensorInput the graph's one [n, F] input, or null when each feature is an input
   * @param scoreOutput the graph output holding the score
   * @param scoreIndex column of a 2-D score output to keep (the positive class), or -1
   * @param batchRows rows per ONNX Runtime call
   * @return the kept columns plus {@code score} (double)
   */
  public static Dataset<Row> score(
      Dataset<Row> frame,
      int keep,
      int skip,
      byte[] graph,
      String sha256,
      String tensorInput,
      String scoreOutput,
      int scoreIndex,
      int batchRows) {
    StructType schema = frame.schema();
    String[] features = Arrays.copyOfRange(schema.fieldNames(), keep, schema.fields().length);
    // Fail on the driver with a clear message, before any task starts; in local mode the
    // driver is the executor, so this also builds the session the tasks will reuse.
    OrtSession session = Sessions.get(sha256, 1, () -> graph);
    Layout layout = Layout.of(session, features, tensorInput, scoreOutput);
    JavaSparkContext context =
        JavaSparkContext.fromSparkContext(frame.sparkSession().sparkContext());
    Broadcast<byte[]> shipped = context.broadcast(graph);
    StructType out = new StructType(Arrays.copyOf(schema.fields(), keep))
        .add("score", DataTypes.DoubleType, true);
    ScorePartitions scorer =
        new ScorePartitions(
            shipped, sha256, layout, keep, skip, scoreOutput, scoreIndex,
            batchRows > 0 ? batchRows : DEFAULT_BATCH_ROWS);
    return frame.mapPartitions(scorer, Encoders.row(out));
  }

  /** What the graph wants for each feature: its input name and element type. */
  static final class Layout implements java.io.Serializable {
    private static final long serialVersionUID = 1L;
    final String[] inputs;
    final OnnxJavaType[] types;
    final String tensorInput;

    private Layout(String[] inputs, OnnxJavaType[] types, String tensorInput) {
      this.inputs = inputs;
      this.types = types;
      this.tensorInput = tensorInput;
    }

    static Layout of(
        OrtSession session, String[] features, String tensorInput, String scoreOutput) {
      try {
        Map<String, NodeInfo> info = session.getInputInfo();
        if (!session.getOutputNames().contains(scoreOutput)) {
          throw new IllegalArgumentException(
              "The ONNX graph has no output " + scoreOutput + " (it has "
                  + session.getOutputNames() + "); check the contract's score_output.");
        }
        OnnxJavaType[] types = new OnnxJavaType[features.length];
        for (int i = 0; i < features.length; i++) {
          String name = tensorInput != null ? tensorInput : features[i];
          NodeInfo node = info.get(name);
          if (node == null || !(node.getInfo() instanceof TensorInfo)) {
            throw new IllegalArgumentException(
                "The ONNX graph has no tensor input " + name + " (it has " + info.keySet()
                    + "); the contract and the graph do not fit.");
          }
          types[i] = ((TensorInfo) node.getInfo()).type;
          switch (types[i]) {
            case FLOAT: case DOUBLE: case INT64: case INT32: case STRING:
              break;
            default:
              throw new IllegalArgumentException(
                  "The ONNX graph's input " + name + " is " + types[i]
                      + "; the engine feeds float, double, int64, int32 or string.");
          }
        }
        return new Layout(features.clone(), types, tensorInput);
      } catch (OrtException exc) {
        throw new IllegalStateException("ONNX Runtime cannot describe the graph", exc);
      }
    }
  }
}
